"""Zip bombs: a zip archive's declared member sizes, checked from its central directory
before anything inflates a member.

torch allocates what an archive's directory declares, so a small ``.pt`` whose
``data.pkl`` claims to inflate to gigabytes costs that memory before torch notices the
lie. :func:`check_zip_members` reads only the directory (``zipfile.ZipInfo``) and
refuses such an archive with a one-line :class:`~armetrics.errors.LoadError`. Used by
:mod:`armetrics.loading` for checkpoints and for every archive ``torch.load`` reads;
it imports nothing heavy (no torch), so data loaders can use it too. See
docs/loading.md, "What is checked before anything is loaded", step 3.
"""

from __future__ import annotations

import zipfile
from typing import Iterable

from .errors import LoadError, one_line

#: Largest declared (inflated) size of a pickle or JSON member of an archive, and of any
#: compressed member: torch's own pickles are kilobytes to a few MiB, tensors are stored
#: uncompressed. A member beyond this is a zip bomb or not a torch file.
MEMBER_LIMIT = 256 * 2**20
#: deflate cannot expand data more than ~1032:1; a member declaring more lies about its size.
DEFLATE_MAX_RATIO = 1032


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def check_zip_members(where: str, infos: Iterable[zipfile.ZipInfo], size: int) -> None:
    """Refuse an archive whose central directory declares sizes torch would allocate
    for but the ``size``-byte file cannot hold: a pickle or JSON member (or any
    compressed member) inflating beyond :data:`MEMBER_LIMIT`, a member claiming more
    than deflate's ~1032:1, a stored member claiming more bytes than it stores, members
    reaching past the end of the file or overlapping. Reads only the directory."""
    fix = "a zip bomb or a damaged file: download or save it again"
    total = 0
    for i in infos:
        name, declared, stored = one_line(i.filename), i.file_size, i.compress_size
        if i.compress_type == zipfile.ZIP_STORED:
            if declared != stored:
                raise LoadError(f"{where}: archive member {name} is stored uncompressed but declares {declared} bytes "
                                f"for {stored} stored bytes: {fix}")
        elif declared > DEFLATE_MAX_RATIO * stored + 1024:
            raise LoadError(f"{where}: archive member {name} declares {declared} bytes ({_mib(declared)}) from "
                            f"{stored} compressed bytes, more than deflate can expand ({DEFLATE_MAX_RATIO}:1): {fix}")
        if i.header_offset + stored > size:
            raise LoadError(f"{where}: archive member {name} declares {stored} bytes at offset {i.header_offset}, "
                            f"past the end of the {size}-byte file: {fix}")
        pickle_like = i.filename.endswith((".pkl", ".json"))
        if declared > MEMBER_LIMIT and (pickle_like or i.compress_type != zipfile.ZIP_STORED):
            kind = "pickle/JSON member" if pickle_like else "compressed member (torch stores tensors uncompressed)"
            raise LoadError(f"{where}: archive {kind} {name} declares {declared} bytes ({_mib(declared)}), more than "
                            f"the {_mib(MEMBER_LIMIT)} armetrics lets torch inflate: {fix}")
        total += stored
    if total > size:
        raise LoadError(f"{where}: archive members declare {total} bytes in a {size}-byte file "
                        f"(overlapping members): {fix}")
