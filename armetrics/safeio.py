"""Inputs are opened only when they are what they claim to be.

A FIFO blocks ``open()`` forever, a device node streams without end, ``/proc`` files
claim a size of 0: every path armetrics reads (checkpoints, ``--arch`` files, data,
reports) goes through :func:`regular_file` first, which looks at ``os.stat`` and never
opens anything that is not a regular file. Reading errors (permissions, I/O) become one
line naming the path and the fix.

(The check is made by path just before the open; a local attacker who can swap files
between the two calls is outside armetrics' threat model, see docs/security.md.)
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Sequence, Type

from .errors import ArmetricsError, InputError, first_line, one_line

KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def kind_of(mode: int) -> str | None:
    """What a non-regular file is ("a FIFO (named pipe)", ...), or None for a regular file."""
    for test, name in KINDS:
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def regular_file(path: str | Path, what: str = "file", error: Type[ArmetricsError] = InputError) -> os.stat_result:
    """``os.stat(path)`` if ``path`` is an existing regular file (symlinks followed), else
    ``error`` naming what it is instead. Never opens the path."""
    shown = one_line(str(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} {shown} does not exist: check the path") from None
    except (OSError, ValueError) as exc:  # ValueError: an embedded NUL byte
        raise error(f"cannot access {what} {shown} ({getattr(exc, 'strerror', None) or first_line(exc)}): "
                    f"check the path and its permissions") from None
    kind = kind_of(st.st_mode)
    if kind is not None:
        raise error(f"{what} {shown} is {kind}, not a regular file: pass a regular file") from None
    return st


def read_error(path: str | Path, exc: OSError, what: str = "file", error: Type[ArmetricsError] = InputError) -> ArmetricsError:
    """The one-line error for an ``OSError`` raised while reading ``path``."""
    shown = one_line(str(path))
    if isinstance(exc, PermissionError):
        return error(f"cannot read {what} {shown}: permission denied: check its permissions (chmod u+r)")
    return error(f"cannot read {what} {shown} ({exc.strerror or first_line(exc)}): check the file")


def read_bytes(path: str | Path, what: str = "file", error: Type[ArmetricsError] = InputError, limit: int | None = None) -> bytes:
    """The bytes of a regular file, refusing special files and files larger than ``limit``."""
    st = regular_file(path, what, error)
    if limit is not None and st.st_size > limit:
        raise error(f"{what} {one_line(str(path))} is {st.st_size / 2**20:.0f} MiB, more than the {limit / 2**20:.0f} MiB "
                    f"armetrics reads for it: check that it is the right file")
    try:
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit + 1)
    except OSError as exc:
        raise read_error(path, exc, what, error) from None


def sha256_file(path: str | Path, what: str = "file", error: Type[ArmetricsError] = InputError) -> str:
    """SHA-256 hex of a regular file's bytes, streamed in 1 MiB blocks; special files are
    refused unopened and reading errors are one line (:func:`read_error`)."""
    return sha256_files([path], what, error)


def sha256_files(paths: Sequence[str | Path], what: str = "file", error: Type[ArmetricsError] = InputError) -> str:
    """SHA-256 hex of the bytes of ``paths`` read one after the other (a model shipped as
    several files, e.g. a RobustBench ensemble's ``NAME.pt_m0.pt``, ``_m1``, ... in order)."""
    h = hashlib.sha256()
    for path in paths:
        regular_file(path, what, error)
        try:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError as exc:
            raise read_error(path, exc, what, error) from None
    return h.hexdigest()
