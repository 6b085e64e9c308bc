"""Corruption benchmarks: CIFAR-10-C / CIFAR-100-C (``.npy`` files) and ImageNet-C (folders).

CIFAR-10-C and CIFAR-100-C (Hendrycks & Dietterich, 2019) are distributed as one
``<corruption>.npy`` per corruption, uint8 N,32,32,3 holding the 10,000 test images at
each of the 5 severities in turn (50,000 rows, severity 1 first), and ``labels.npy`` (the
labels of those rows, or of one severity's block). ``load_data(DIR, corruption="fog",
severity=5)`` reads the headers of both files first, then only the selected rows of the
severity's block (by seeking, :data:`~armetrics.npz.CHUNK_BYTES` at a time), so memory
follows ``-n``, not the 150 MB file. ImageNet-C is a folder tree
``DIR/<corruption>/<severity>/<wnid>/*.JPEG``; the same options pick the ImageFolder
``DIR/<corruption>/<severity>``. See docs/data.md ("Corruptions").
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, DataError, first_line, one_line, shorten
from .npz import CHUNK_BYTES, _Member, _nbytes, _read_npy_header, _runs, header_problem
from .safeio import read_error, regular_file

if TYPE_CHECKING:  # pragma: no cover
    from .data import Data
    from .preprocess import Preprocessing

#: The 15 corruptions of RobustBench's corruption benchmarks (``robustbench.data.CORRUPTIONS``).
CORRUPTIONS = ("shot_noise", "motion_blur", "snow", "pixelate", "gaussian_noise", "defocus_blur", "brightness",
               "fog", "zoom_blur", "frost", "glass_blur", "impulse_noise", "contrast", "jpeg_compression",
               "elastic_transform")
#: The 4 further corruptions the CIFAR-10-C / CIFAR-100-C / ImageNet-C archives hold.
EXTRA_CORRUPTIONS = ("gaussian_blur", "saturate", "spatter", "speckle_noise")
#: ImageNet-3DCC's 12 corruptions (``robustbench.data.CORRUPTIONS_3DCC``; same folder layout).
CORRUPTIONS_3DCC = ("near_focus", "far_focus", "bit_error", "color_quant", "flash", "fog_3d", "h265_abr",
                    "h265_crf", "iso_noise", "low_light", "xy_motion_blur", "z_motion_blur")
#: Every corruption name ``--corruption`` accepts.
KNOWN = CORRUPTIONS + EXTRA_CORRUPTIONS + CORRUPTIONS_3DCC
#: Severities, 1 (mildest) .. 5 (strongest).
SEVERITIES = (1, 2, 3, 4, 5)


def _error(message: str) -> DataError:
    return DataError(one_line(message))


def check_options(corruption: Any, severity: Any) -> tuple[str | None, int | None]:
    """``(corruption, severity)`` checked: both or neither; a known name; severity 1..5.
    Bad values raise :class:`~armetrics.errors.ConfigError`."""
    if corruption is None:
        if severity is not None:
            raise ConfigError("--severity needs --corruption NAME (a corruption of CIFAR-10-C, CIFAR-100-C or "
                              "ImageNet-C, e.g. --corruption fog --severity 5)")
        return None, None
    if not isinstance(corruption, str):
        raise ConfigError(f"--corruption must be a corruption name such as 'fog', got {type(corruption).__name__}")
    name = corruption.strip()
    if name not in KNOWN:
        close = difflib.get_close_matches(name, KNOWN, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown corruption {one_line(shorten(name))!r}{hint}: use one of "
                          f"{', '.join(sorted(CORRUPTIONS))} (also {', '.join(EXTRA_CORRUPTIONS)}, and ImageNet-3DCC's "
                          f"{', '.join(CORRUPTIONS_3DCC)})")
    if severity is None:
        raise ConfigError(f"--corruption {name} needs --severity 1..5 (5 is the strongest)")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or int(severity) not in SEVERITIES:
        raise ConfigError(f"--severity must be an integer 1..5 (5 is the strongest), got {severity!r}")
    return name, int(severity)


def root_error(path: Path) -> DataError | None:
    """The error for a corruption dataset's root passed without ``--corruption`` (None if
    ``path`` is not one: ``labels.npy`` beside a ``<corruption>.npy``, or only
    ``<corruption>/<severity>/`` folders): its folders are not classes."""
    try:
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    except OSError:
        return None  # the ImageFolder listing names the problem
    if os.path.lexists(path / "labels.npy") and any(p.suffix == ".npy" and p.stem in KNOWN for p in entries):
        return _error(f"{path} is a CIFAR-10-C / CIFAR-100-C directory (one .npy file per corruption): pass "
                      f"--corruption NAME --severity 1..5, e.g. --corruption fog --severity 5")
    subdirs = [p for p in entries if p.is_dir()]
    if subdirs and all(p.name in KNOWN and any((p / str(s)).is_dir() for s in SEVERITIES) for p in subdirs):
        return _error(f"{path} is an ImageNet-C directory (<corruption>/<severity>/<wnid>/): pass --corruption NAME "
                      f"--severity 1..5, or point --data at one of its <corruption>/<severity> folders")
    return None


def load(path: Path, name: str, corruption: str, severity: int, n: int | None, seed: int | None, batch_size: int,
         prep: "Preprocessing | None" = None) -> "Data":
    """The images of ``corruption`` at ``severity`` from a CIFAR-10-C / CIFAR-100-C directory
    (``labels.npy`` and ``<corruption>.npy``) or an ImageNet-C tree."""
    from . import data

    if os.path.lexists(path / "labels.npy"):
        return _load_npy_track(path, name, corruption, severity, n, seed, batch_size, prep)
    folder = path / corruption / str(severity)
    if folder.is_dir():
        return data._load_image_folder(folder, name, n, seed, batch_size, prep)
    if (path / corruption).is_dir():
        raise _error(f"{path / corruption} has no folder {severity} (severity {severity}): extract that severity "
                     f"of ImageNet-C there")
    raise _error(f"{path} is not a corruption dataset with {corruption}: point --data at the extracted CIFAR-10-C "
                 f"or CIFAR-100-C directory (labels.npy and {corruption}.npy) or ImageNet-C directory "
                 f"({corruption}/{severity}/<wnid>/)")


# ----------------------------------------------------------------------------- .npy files
def _npy_header(path: Path, what: str) -> tuple[_Member, os.stat_result]:
    """The ``.npy`` header of ``path``, checked against the file before any data is read:
    no object, structured or sub-array dtype, C order, the declared array within the file."""
    st = regular_file(path, what, DataError)
    if st.st_size == 0:
        raise _error(f"{what} {path} is empty (0 bytes): download the dataset again")
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype = _read_npy_header(f)
            offset = f.tell()
    except OSError as exc:
        raise read_error(path, exc, what, DataError) from None
    except Exception as exc:
        raise _error(f"{path} is not a readable .npy file ({first_line(exc, 120)}): download the dataset "
                     f"again") from None
    problem = header_problem(shape, dtype, "download the dataset again (its .npy files are plain uint8 arrays)")
    if problem:
        raise _error(f"{path} {problem}")
    if fortran and len(shape) > 1:
        raise _error(f"{path} is stored column-major (fortran_order): save it again with numpy.save of a "
                     f"C-ordered array")
    nbytes = math.prod(shape) * dtype.itemsize
    return _Member(path.name, None, tuple(shape), False, dtype, offset, nbytes), st


def _check_size(m: _Member, path: Path, st: os.stat_result) -> None:
    if m.offset + m.nbytes > st.st_size:
        raise _error(f"{path} declares shape {m.shape} ({_nbytes(m.nbytes)}) but holds "
                     f"{_nbytes(max(st.st_size - m.offset, 0))}: the file is truncated: download the dataset again")


def _read_rows(path: Path, m: _Member, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted, unique) of the C-ordered array of ``m``, by seeking to each
    run of consecutive rows and reading it in chunks."""
    row_bytes = math.prod(m.shape[1:]) * m.dtype.itemsize
    out = np.empty(len(rows) * row_bytes, np.uint8)
    try:
        with open(path, "rb") as f:
            done = 0
            for a, b in _runs(rows):
                f.seek(m.offset + a * row_bytes)
                view = memoryview(out)[done * row_bytes:(done + b - a) * row_bytes]
                while len(view):
                    got = f.readinto(view[:CHUNK_BYTES])
                    if not got:
                        raise _error(f"{path} is truncated: its header declares shape {m.shape} but the data ends "
                                     f"early: download the dataset again")
                    view = view[got:]
                done += b - a
    except OSError as exc:
        raise read_error(path, exc, "data file", DataError) from None
    return out.view(m.dtype).reshape((len(rows),) + m.shape[1:])


def _track_labels(labels_path: Path, x_path: Path, count: int, severity: int) -> tuple[np.ndarray, os.stat_result]:
    """The labels of severity ``severity``'s block of ``count`` rows (5 blocks in the
    corruption file): ``labels.npy`` holds one label per row of the file or per row of a block."""
    from .data import _check_y_header

    hy, st = _npy_header(labels_path, "labels file")
    _check_y_header(hy, str(labels_path))
    _check_size(hy, labels_path, st)
    if hy.shape[0] not in (count, 5 * count):
        raise _error(f"{labels_path} holds {hy.shape[0]} labels but {x_path.name} holds {5 * count} images "
                     f"(5 severities of {count}): it needs {count} or {5 * count} labels: download the dataset again")
    first = (severity - 1) * count if hy.shape[0] == 5 * count else 0
    return _read_rows(labels_path, hy, np.arange(first, first + count)), st


def _cifar_c_classes(path: Path, y: np.ndarray) -> tuple[int, list[str]]:
    """(10, CIFAR-10's names) or, for a directory named CIFAR-100-C or labels above 9,
    (100, CIFAR-100's names); ``y``: checked labels (0..99)."""
    from .data import CIFAR10_CLASSES, CIFAR100_CLASSES

    hundred = path.resolve().name.lower() == "cifar-100-c" or bool(y.size and int(np.max(y)) >= 10)
    classes = CIFAR100_CLASSES if hundred else CIFAR10_CLASSES
    return len(classes), list(classes)


def _load_npy_track(path: Path, name: str, corruption: str, severity: int, n: int | None, seed: int | None,
                    batch_size: int, prep: "Preprocessing | None") -> "Data":
    """One corruption at one severity of CIFAR-10-C / CIFAR-100-C, read selectively."""
    from .data import Data, _array_getter, _check_labels, _check_x_header, _file_digest, _selection

    x_path, labels_path = path / f"{corruption}.npy", path / "labels.npy"
    if not os.path.lexists(x_path):
        present = sorted(p.stem for p in path.glob("*.npy") if p.stem != "labels")
        held = f" (it holds {', '.join(present[:6])}{', ...' if len(present) > 6 else ''})" if present else ""
        raise _error(f"{path} has no {corruption}.npy{held}: pick a corruption it holds or extract the archive again")
    hx, st_x = _npy_header(x_path, "data file")
    _check_x_header(hx, str(x_path))
    _check_size(hx, x_path, st_x)
    if hx.shape[0] == 0 or hx.shape[0] % 5:
        raise _error(f"{x_path} holds {hx.shape[0]} images, not 5 severities of equal size: download the dataset again")
    count = hx.shape[0] // 5
    y, st_y = _track_labels(labels_path, x_path, count, severity)
    y = _check_labels(y, str(labels_path), 100)
    num_classes, classes = _cifar_c_classes(path, y)
    order = _selection(count, n, seed)
    rows = np.unique(order)
    x = _read_rows(x_path, hx, rows + (severity - 1) * count)
    get = _array_getter(x, str(x_path), rows, prep)
    content = lambda: (f"corruption:{corruption}/{severity}:" + _file_digest(x_path, st_x)  # noqa: E731
                       + ":" + _file_digest(labels_path, st_y))
    return Data(name, y, get, num_classes, classes, order, batch_size, seed, content=content)
