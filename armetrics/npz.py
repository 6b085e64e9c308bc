"""An ``.npz`` opened without trusting it: headers first, then only the bytes needed.

The zip directory and each member's ``.npy`` header are read before any data; the sizes
a member declares are checked against what it can hold (its compressed size against the
file, a stored member's size against its compressed size, a deflated one's against
:data:`MAX_DEFLATE_RATIO`, the array's size against the member) before anything is
allocated; object, structured and sub-array dtypes are refused. :meth:`_Npz.read_rows`
then reads only the selected rows: a stored member by seeking to each run of
consecutive rows, a deflated one by decompressing it as a stream, :data:`CHUNK_BYTES`
at a time. This module knows arrays, not what they mean: the checks on images and
labels are :mod:`armetrics.data`'s (docs/data.md, ".npz: headers first").
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import zipfile
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np

from .errors import DataError, first_line, one_line
from .safeio import read_error
from .zipcheck import DEFLATE_MAX_RATIO

#: Deflate cannot expand data more than ~1032x; a member declaring more is corrupt or a bomb.
MAX_DEFLATE_RATIO = DEFLATE_MAX_RATIO  # one constant with the checkpoint loader's zip checks
#: Bytes decompressed or read at a time while streaming an .npz member.
CHUNK_BYTES = 4 << 20


def _error(message: str) -> DataError:
    """A DataError whose message stays one line (file names may hold newlines)."""
    return DataError(one_line(message))


def _nbytes(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"


class _Member(NamedTuple):
    """The ``.npy`` header of one member of an .npz."""

    key: str
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype
    offset: int  # bytes of .npy header before the data
    nbytes: int


class _Short(Exception):
    """A member's data ended before the size its header declares."""


def _read_npy_header(f) -> tuple:
    from numpy.lib import format as npformat

    version = npformat.read_magic(f)
    readers = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}
    if version in readers:
        return readers[version](f)
    try:  # (3, 0): utf-8 field names; numpy has no public reader for it
        from numpy.lib._format_impl import _read_array_header
    except ImportError:  # pragma: no cover - older numpy
        from numpy.lib.format import _read_array_header  # type: ignore[attr-defined,no-redef]
    return _read_array_header(f, version)


class _Npz:
    """An .npz opened without trusting it: headers first, then only the bytes needed."""

    def __init__(self, path: Path, st: os.stat_result | None, *, data: bytes | None = None):
        """Open ``path`` (``st``: its ``os.stat``), or read ``data`` (the file's bytes,
        already in memory; ``path`` then only names it in messages)."""
        self.path = path
        if data is not None:
            self.size, self.fh = len(data), io.BytesIO(data)
        else:
            self.size = st.st_size
            try:
                self.fh = open(path, "rb")
            except OSError as exc:
                raise read_error(path, exc, "data file", DataError) from None
        try:
            self.zf = zipfile.ZipFile(self.fh)
            self.members = {}
            for info in self.zf.infolist():
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                self.members[key] = info
        except Exception as exc:
            self.fh.close()
            raise self.corrupt(exc) from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        with contextlib.suppress(Exception):
            self.zf.close()
        self.fh.close()

    def corrupt(self, exc: BaseException, key: str | None = None) -> DataError:
        where = f", member {key}" if key else ""
        return _error(f"{self.path} is not a readable .npz file{where} ({first_line(exc, 120)}): save it again with numpy.savez")

    def header(self, key: str, check: Callable[[_Member], None] | None = None) -> _Member:
        """The member's .npy header, checked (``check``: more checks on the header, run
        before the declared size is compared with what the member holds)."""
        info = self.members[key]
        p = f"{self.path}: {key}"
        if info.flag_bits & 0x1:
            raise _error(f"{p} is encrypted: save the arrays again with numpy.savez")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _error(f"{p} is compressed with zip method {info.compress_type}, not stored or deflate as numpy "
                         f"writes them: save it again with numpy.savez or numpy.savez_compressed")
        if info.compress_size > self.size:
            raise _error(f"{p} declares {_nbytes(info.compress_size)} of data but the file has {_nbytes(self.size)}: "
                         f"the file is truncated or corrupt: download or save it again")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise _error(f"{p} is stored uncompressed but declares {info.file_size} bytes in {info.compress_size}: "
                         f"the file is corrupt: save it again")
        if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024:
            raise _error(f"{p} declares {_nbytes(info.file_size)} uncompressed from {_nbytes(info.compress_size)}, "
                         f"more than deflate can expand (about {MAX_DEFLATE_RATIO}x): the file is corrupt or a "
                         f"decompression bomb: check where it came from")
        try:
            with self.zf.open(info) as f:
                shape, fortran, dtype = _read_npy_header(f)
                offset = f.tell()
        except Exception as exc:
            raise self.corrupt(exc, key) from None
        problem = header_problem(shape, dtype, "save plain numeric arrays (numpy.savez with allow_pickle=False)")
        if problem:
            raise _error(f"{p} {problem}")
        nbytes = math.prod(shape) * dtype.itemsize
        m = _Member(key, info, tuple(shape), bool(fortran), dtype, offset, nbytes)
        if check is not None:
            check(m)
        if offset + nbytes > info.file_size:
            raise _error(f"{p} declares shape {shape} ({_nbytes(nbytes)}) but its member holds "
                         f"{_nbytes(max(info.file_size - offset, 0))}: the file is truncated or corrupt "
                         f"(or a decompression bomb): save it again")
        return m

    # -- reading
    def _data_start(self, info: zipfile.ZipInfo) -> int:
        """Offset of a stored member's bytes in the file (after its local header)."""
        self.fh.seek(info.header_offset)
        head = self.fh.read(30)
        if len(head) != 30 or head[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile("bad local file header")
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        if start + info.compress_size > self.size:
            raise _Short()
        return start

    @contextlib.contextmanager
    def _reader(self, m: _Member, seek: bool = False):
        """(read(n) -> bytes, skip(n)) positioned at the member's first data byte; ``seek``:
        a stored member is read by offset in the file (skips cost nothing, no CRC check),
        otherwise through zipfile (which checks the CRC once the member is read to its end)."""
        if seek and m.info.compress_type == zipfile.ZIP_STORED:
            pos = [self._data_start(m.info) + m.offset]
            fh = self.fh

            def read(count: int) -> bytes:
                fh.seek(pos[0])
                data = fh.read(count)
                pos[0] += len(data)
                return data

            def skip(count: int) -> None:
                pos[0] += count

            yield read, skip
            return
        with self.zf.open(m.info) as f:
            if len(f.read(m.offset)) != m.offset:
                raise _Short()

            def skip(count: int) -> None:
                while count > 0:
                    got = len(f.read(min(CHUNK_BYTES, count)))
                    if not got:
                        raise _Short()
                    count -= got

            yield f.read, skip

    @staticmethod
    def _fill(read, out: np.ndarray) -> None:
        """Fill the uint8 vector ``out`` from ``read`` in chunks."""
        pos, total = 0, out.size
        while pos < total:
            data = read(min(CHUNK_BYTES, total - pos))
            if not data:
                raise _Short()
            out[pos:pos + len(data)] = np.frombuffer(data, np.uint8)
            pos += len(data)

    def _guard(self, m: _Member, work: Callable[[], np.ndarray]) -> np.ndarray:
        try:
            return work()
        except DataError:
            raise
        except _Short:
            raise _error(f"{self.path}: {m.key} is truncated: its header declares shape {m.shape} "
                         f"({_nbytes(m.nbytes)}) but the data ends early: save it again") from None
        except MemoryError:
            raise _error(f"{self.path}: not enough memory to read {m.key}: select fewer images (-n)") from None
        except Exception as exc:
            raise self.corrupt(exc, m.key) from None

    def read(self, m: _Member) -> np.ndarray:
        """The whole array of a member (after :meth:`header` checked its size)."""
        def work() -> np.ndarray:
            if m.nbytes == 0:
                return np.zeros(m.shape, m.dtype)
            out = np.empty(m.nbytes, np.uint8)
            with self._reader(m) as (read, _):
                self._fill(read, out)
            return out.view(m.dtype).reshape(m.shape, order="F" if m.fortran else "C")
        return self._guard(m, work)

    def read_rows(self, m: _Member, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (sorted, unique) of a member, never holding more than those rows
        plus one chunk: seeks in a stored member, streams a deflated one."""
        def work() -> np.ndarray:
            n_rows, per = m.shape[0], math.prod(m.shape[1:])
            row_bytes = per * m.dtype.itemsize
            out = np.empty(len(rows) * row_bytes, np.uint8)
            with self._reader(m, seek=not m.fortran) as (read, skip):
                if not m.fortran:
                    pos = done = 0
                    for a, b in _runs(rows):
                        skip((a - pos) * row_bytes)
                        self._fill(read, out[done * row_bytes:(done + b - a) * row_bytes])
                        done, pos = done + b - a, b
                else:  # column-major: element e belongs to row e % N; keep the selected ones
                    keep = np.zeros(n_rows, bool)
                    keep[rows] = True
                    size = m.dtype.itemsize
                    step = max(1, (1 << 20) // size)
                    total, e, filled = n_rows * per, 0, 0
                    while e < total:
                        count = min(step, total - e)
                        buf = np.empty(count * size, np.uint8)
                        self._fill(read, buf)
                        kept = buf.reshape(count, size)[keep[np.arange(e, e + count) % n_rows]].reshape(-1)
                        out[filled:filled + kept.size] = kept
                        filled += kept.size
                        e += count
            return out.view(m.dtype).reshape((len(rows),) + m.shape[1:], order="F" if m.fortran else "C")
        return self._guard(m, work)


def header_problem(shape: tuple, dtype: np.dtype, fix: str) -> str | None:
    """Why an ``.npy`` header's array is not plain numbers armetrics reads (an impossible
    shape, Python objects, which are never unpickled, a structured dtype), as the end of a
    sentence about the file with ``fix`` appended; None when it is fine."""
    if len(shape) > 32 or any(d < 0 or d > 1 << 62 for d in shape):
        return (f"declares an impossible shape ({len(shape)} dimensions"
                f"{', one negative or above 2**62' if len(shape) <= 32 else ''}): the file is corrupt: {fix}")
    if dtype.hasobject:
        return f"holds Python objects (dtype {str(dtype)[:80]}), which armetrics never unpickles: {fix}"
    if dtype.names is not None or dtype.subdtype is not None:
        return f"has the structured dtype {str(dtype)[:80]}: {fix}"
    return None


def _runs(rows: np.ndarray) -> Iterator[tuple[int, int]]:
    """Runs of consecutive values in sorted ``rows`` as half-open ``(start, stop)``."""
    if not len(rows):
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts, stops = np.r_[0, breaks], np.r_[breaks, len(rows)]
    for s, e in zip(starts, stops):
        yield int(rows[s]), int(rows[e - 1]) + 1


def npz_bytes(values: "dict[str, np.ndarray]") -> bytes:
    """An ``.npz`` (as ``np.savez`` writes it, stored, readable by ``np.load``) of
    ``values`` by name, in memory. Unlike ``np.savez(**values)`` any name works as a key
    (also ``file`` or ``allow_pickle``); no pickles."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, array in values.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)
    return buf.getvalue()
