"""A data source -> batches of ``(x in [0, 1] float32 NCHW, y int64)``.

Sources: ``cifar10-sample`` (1,000 CIFAR-10 test images, 100 per class, shipped in
the package; the default), an ImageFolder directory (``DIR/<class>/<image>``, classes
in sorted order), a ``cifar-10-batches-py`` directory (its ``test_batch``), or an
``.npz`` with ``x`` (uint8 NHWC, or float NCHW in [0, 1]) and ``y``.

Every source may come from the internet (docs/data.md): special files (FIFOs, devices,
sockets) are refused before they are opened; sizes a file declares are checked against
what it can hold before anything is allocated; an ``.npz`` is read selectively — its
labels first, then only the rows of ``x`` the seeded selection picked, streamed from a
compressed member in bounded chunks — so memory follows ``-n``, not the file; image
headers are read before any pixel is decoded and images over :data:`MAX_IMAGE_PIXELS`
are refused. Images stay compact (uint8 arrays or file paths) and are decoded batch by
batch. :meth:`Data.fingerprint` identifies the content of a selection.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import re
import struct
import sys
import warnings
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch

from . import checks
from .errors import ConfigError, DataError, first_line, one_line
from .npz import CHUNK_BYTES, MAX_DEFLATE_RATIO  # noqa: F401  (re-exported: docs/data.md's limits)
from .npz import _Member, _nbytes, _Npz
from .safeio import kind_of, read_bytes, read_error, regular_file, sha256_file

if TYPE_CHECKING:  # pragma: no cover
    from .preprocess import Preprocessing

DEFAULT_SOURCE = "cifar10-sample"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
#: The PIL formats those extensions name; a file whose content is another format (EPS,
#: which PIL renders with Ghostscript, PSD, ...) is refused, whatever its extension.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "PPM", "TIFF")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: CIFAR-100's fine classes in label order (its ``meta`` file's ``fine_label_names``, which
#: are sorted); the names of CIFAR-100-C, whose archive has no ``meta``.
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm")

#: Largest image decoded, in pixels (width x height), from files and from arrays.
MAX_IMAGE_PIXELS = 64_000_000
#: Largest number of values one image (a row of an .npz ``x``) may hold: 64 MP x 4 channels.
MAX_IMAGE_VALUES = 4 * MAX_IMAGE_PIXELS
#: Most images one source may hold (the seeded selection permutes all of them).
MAX_IMAGES = 10_000_000
#: Labels must be below this (``0..MAX_CLASSES-1``).
MAX_CLASSES = 1_000_000
#: Largest CIFAR batch file read (a real one is 31 MB).
CIFAR_BATCH_LIMIT = 1 << 30
#: Largest CIFAR-100 ``meta`` file read (a real one is 1.6 KB).
CIFAR_META_LIMIT = 1 << 20
#: Largest ``classes`` array read from an .npz.
MAX_CLASSES_BYTES = 64 << 20


def _error(message: str) -> DataError:
    """A DataError whose message stays one line (file names may hold newlines)."""
    return DataError(one_line(message))


@dataclass
class DataInfo:
    """The data section of a report."""

    source: str
    n: int
    seed: int | None
    num_classes: int
    classes: list[str] = field(default_factory=list)
    #: The preprocessing applied (:mod:`armetrics.preprocess` name), None for none.
    preprocessing: str | None = None
    #: The corruption and severity (1..5) of a CIFAR-10-C / CIFAR-100-C / ImageNet-C source.
    corruption: str | None = None
    severity: int | None = None

    OPTIONAL = ("preprocessing", "corruption", "severity")

    def to_dict(self) -> dict:
        """The report's data section; the optional fields only when set (so reports of
        plain sources keep their shape)."""
        return {k: v for k, v in asdict(self).items() if k not in self.OPTIONAL or v is not None}


class Data:
    """A fixed, seeded selection of labelled images, iterated in batches.

    ``get(indices)`` returns float32 NCHW in [0, 1] for positions into the *source*;
    ``order`` is the selection (which images, in which order). ``content`` identifies
    the source's content for :meth:`fingerprint`: a string, or a callable returning one
    (computed on first use).
    """

    def __init__(self, source: str, labels: np.ndarray, get: Callable[[np.ndarray], np.ndarray],
                 num_classes: int, classes: Sequence[str], order: np.ndarray, batch_size: int, seed: int | None,
                 content: "str | Callable[[], str] | None" = None):
        self.source = source
        self._labels = labels
        self._get = get
        self.order = order
        self.batch_size = batch_size
        self.info = DataInfo(source, len(order), seed, num_classes, list(classes))
        self._content = content
        self._fingerprint: str | None = None

    @property
    def n(self) -> int:
        return len(self.order)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def batches(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches over positions ``start:stop`` of the selection (for sharded runs)."""
        stop = self.n if stop is None else min(stop, self.n)
        for lo in range(start, stop, self.batch_size):
            idx = self.order[lo:min(lo + self.batch_size, stop)]
            x = torch.from_numpy(np.ascontiguousarray(self._get(idx)))
            y = torch.from_numpy(self._labels[idx].astype(np.int64))
            yield x, y

    def __iter__(self):
        return self.batches()

    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self._get(self.order[:1]).shape[1:])

    def labels(self) -> np.ndarray:
        """The labels of the selection, in its order: int64 (n,)."""
        return np.asarray(self._labels[self.order], dtype=np.int64)

    def content_id(self) -> str:
        """What the source holds, independent of the selection: ``"npz:<sha256>"`` of an
        .npz file, ``"imagefolder:<sha256>"`` over the selected image files' hashes,
        ``"decoded:<sha256>"`` of the decoded images of a Data built by hand, ...
        (computed on first use; the first part of :meth:`fingerprint`)."""
        if callable(self._content):
            self._content = self._content()
        if self._content is None:  # a Data built by hand: hash what it yields
            h = hashlib.sha256()
            for lo in range(0, self.n, self.batch_size):
                h.update(np.ascontiguousarray(self._get(self.order[lo:lo + self.batch_size]), np.float32).tobytes())
            self._content = "decoded:" + h.hexdigest()
        return self._content

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the *content* of this selection: the source's bytes (the .npz
        file, the CIFAR batch) or the bytes of the selected image files, with the labels,
        the class names and the selection order. Another file at the same path gives
        another fingerprint; the same content anywhere gives the same one."""
        if self._fingerprint is None:
            content = self.content_id()
            h = hashlib.sha256(b"armetrics.data.fingerprint/1\n")
            h.update(content.encode() + b"\n")
            described = {k: v for k, v in self.info.to_dict().items() if k in ("num_classes", "classes")
                         or k in DataInfo.OPTIONAL}
            h.update(json.dumps(described, sort_keys=True).encode() + b"\n")
            order = np.asarray(self.order, dtype=np.int64)
            h.update(order.astype("<i8").tobytes())
            h.update(np.asarray(self._labels[order], dtype="<i8").tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


def _selection(count: int, n: int | None, seed: int | None) -> np.ndarray:
    """Which images, in which order: a seeded permutation of ``count`` (or the source's
    order for ``seed=None``), cut to ``n``."""
    order = np.arange(count) if seed is None else np.random.default_rng(seed).permutation(count)
    return order if n is None else order[:n]


def _file_digest(path: Path, st: os.stat_result | None = None, what: str = "data file") -> str:
    """SHA-256 hex of a file's bytes, streamed; ``st``: the file must still be the one stat'ed then."""
    now = regular_file(path, what, DataError)
    if st is not None and (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) != \
            (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns):
        raise _error(f"{what} {path} changed since it was loaded: load the data again")
    return sha256_file(path, what, DataError)


# ------------------------------------------------------------------------- array sources
def _array_getter(x: np.ndarray, source: str, rows: np.ndarray | None = None,
                  prep: "Preprocessing | None" = None) -> Callable[[np.ndarray], np.ndarray]:
    """``get`` over ``x``; ``rows``: the sorted source positions ``x`` holds (None: all);
    ``prep``: the preprocessing applied to each image as it is read."""
    get, hwc = _raw_array_getter(x, source, rows)
    if prep is None:
        return (lambda idx: get(idx).transpose(0, 3, 1, 2).astype(np.float32) / 255.0) if hwc else get
    shape = get(np.zeros(0, np.int64)).shape
    h, w, c = shape[1:4] if hwc else (shape[2], shape[3], shape[1])
    _check_resize(prep, f"{source}: its images", int(w), int(h))
    out_w, out_h = prep.output_size(int(w), int(h))

    def preprocessed(idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), c, out_h, out_w), np.float32)
        for j, im in enumerate(get(idx)):
            out[j] = prep.apply_uint8(im).transpose(2, 0, 1) / np.float32(255.0) if hwc else prep.apply_float(im)
        return out

    return preprocessed


def _raw_array_getter(x: np.ndarray, source: str, rows: np.ndarray | None) -> tuple[Callable, bool]:
    """(``get`` of the rows of ``x`` at source positions, whether they come as uint8 N,H,W,C
    (else float32 N,C,H,W in [0, 1]))."""
    if x.ndim != 4:
        raise _error(f"{source}: x must be 4-D (N,H,W,C uint8 or N,C,H,W float), got shape {x.shape}")

    def pick(idx: np.ndarray) -> np.ndarray:
        if rows is None:
            return idx
        pos = np.searchsorted(rows, idx)
        if len(idx) and (pos.max() >= len(rows) or np.any(rows[pos] != idx)):
            raise _error(f"{source}: image index outside the loaded selection: load the data again with this selection")
        return pos

    if x.dtype == np.uint8:
        if x.shape[-1] not in (1, 3, 4) and x.shape[1] in (1, 3, 4):
            return (lambda idx: x[pick(idx)].transpose(0, 2, 3, 1)), True  # uint8 NCHW
        return (lambda idx: x[pick(idx)]), True
    if np.issubdtype(x.dtype, np.floating):
        if x.size:
            lo, hi = float(np.min(x)), float(np.max(x))  # NaN propagates: NaN images are refused
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1e-6 or hi > 1 + 1e-6:
                raise _error(f"{source}: float images must lie in [0, 1], found [{lo:.3g}, {hi:.3g}]: scale them to [0, 1]")
        return (lambda idx: x[pick(idx)].astype(np.float32)), False
    raise _error(f"{source}: x has dtype {x.dtype}: use uint8 (0-255) or float in [0, 1]")


def _check_labels(y: np.ndarray, source: str, num_classes: int | None = None) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise _error(f"{source}: labels must be 1-D, got shape {y.shape}")
    if y.dtype.kind not in "iuf":
        raise _error(f"{source}: labels must be integers, got dtype {y.dtype}")
    if y.size:
        if y.dtype.kind == "f" and not (np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise _error(f"{source}: labels must be integers, got dtype {y.dtype}")
        lo, hi = y.min(), y.max()
        if lo < 0:
            raise _error(f"{source}: labels out of range (found {int(lo)}): labels must be 0..K-1")
        if num_classes is not None and hi >= num_classes:
            raise _error(f"{source}: label {int(hi)} out of range for {num_classes} classes: labels must be 0..{num_classes - 1}")
        if hi >= MAX_CLASSES:
            raise _error(f"{source}: label {int(hi)} is out of range: labels must be 0..K-1 with at most "
                         f"{MAX_CLASSES:,} classes")
    return y.astype(np.int64)


def _check_x_header(m: _Member, source: str) -> None:
    if len(m.shape) != 4:
        raise _error(f"{source}: x must be 4-D (N,H,W,C uint8 or N,C,H,W float), got shape {m.shape}")
    if m.dtype != np.uint8 and m.dtype.kind != "f":
        raise _error(f"{source}: x has dtype {m.dtype}: use uint8 (0-255) or float in [0, 1]")
    per = math.prod(m.shape[1:])
    if m.shape[0] and per == 0:
        raise _error(f"{source}: x holds images of shape {m.shape[1:]}, with no pixels: save real images")
    if per > MAX_IMAGE_VALUES:
        raise _error(f"{source}: x holds images of shape {m.shape[1:]} ({per:,} values each), more than the "
                     f"{MAX_IMAGE_VALUES:,} ({MAX_IMAGE_PIXELS // 1_000_000} MP x 4 channels) armetrics reads: "
                     f"resize the images")
    if m.shape[0] > MAX_IMAGES:
        raise _error(f"{source}: x declares {m.shape[0]:,} images, more than the {MAX_IMAGES:,} armetrics reads "
                     f"from one source: split the data")


def _check_y_header(m: _Member, source: str) -> None:
    if len(m.shape) != 1:
        raise _error(f"{source}: labels must be 1-D, got shape {m.shape}")
    if m.dtype.kind not in "iuf":
        raise _error(f"{source}: labels must be integers, got dtype {m.dtype}")
    if m.shape[0] > MAX_IMAGES:
        raise _error(f"{source}: y declares {m.shape[0]:,} labels, more than the {MAX_IMAGES:,} images armetrics "
                     f"reads from one source: split the data")


def _load_npz(path: Path, name: str, n: int | None, seed: int | None, batch_size: int, packaged: bool = False,
              prep: "Preprocessing | None" = None) -> Data:
    st = regular_file(path, "data file", DataError)
    path = Path(os.path.abspath(path))
    if st.st_size == 0:
        raise _error(f"data file {path} is empty (0 bytes): download or save it again")
    with _Npz(path, st) as z:
        if "x" not in z.members or "y" not in z.members:
            found = ", ".join(sorted(z.members)[:10]) + (", ..." if len(z.members) > 10 else "")
            raise _error(f"{path}: an .npz data file needs arrays 'x' and 'y' (found {found or 'none'})")
        hx = z.header("x", lambda m: _check_x_header(m, name))
        hy = z.header("y", lambda m: _check_y_header(m, str(path)))
        if hx.shape[0] != hy.shape[0]:
            raise _error(f"{path}: x has {hx.shape[0]} images but y has {hy.shape[0]} labels")
        classes: list[str] = []
        if "classes" in z.members:
            def check_classes(m: _Member) -> None:
                if len(m.shape) != 1 or m.dtype.kind not in "US" or m.nbytes > MAX_CLASSES_BYTES \
                        or m.shape[0] > MAX_CLASSES:
                    raise _error(f"{path}: classes must be a 1-D array of at most {MAX_CLASSES:,} class names "
                                 f"(strings), got dtype {m.dtype} and shape {m.shape}")

            hc = z.header("classes", check_classes)
            classes = [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in z.read(hc).tolist()]
        y = _check_labels(z.read(hy), str(path), len(classes) or None)
        if len(y) == 0:
            raise _error(f"data source {name} holds no images")
        order = _selection(len(y), n, seed)
        rows = np.unique(order)
        everything = len(rows) == len(y)
        x = z.read(hx) if everything else z.read_rows(hx, rows)
    get = _array_getter(x, name, None if everything else rows, prep)
    content: "str | Callable[[], str]" = ("npz:" + _file_digest(path, st)) if packaged else (
        lambda: "npz:" + _file_digest(path, st))
    num_classes = len(classes) or int(y.max()) + 1
    return Data(name, y, get, num_classes, classes, order, batch_size, seed, content=content)


# -------------------------------------------------------------------------- CIFAR batches
class _SafeUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcodes can be replaced
    """Unpickles CIFAR's python batches: numpy arrays, lists, dicts, bytes; nothing else.

    Protocol 5's ``BYTEARRAY8`` is read as ``bytes``: numpy's ``__setstate__`` can fail
    on a crafted bytearray while holding a view of it, and CPython then prints
    "SystemError: deallocated bytearray object has exported buffers" straight to the
    terminal when the bytearray is freed (out-of-band buffers are refused anyway: no
    ``buffers`` are given)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def _load_bytearray8(self):
        (size,) = struct.unpack("<Q", self.read(8))
        if size > sys.maxsize:
            raise pickle.UnpicklingError("BYTEARRAY8 exceeds system's maximum size")
        self.append(bytes(self.read(size)))

    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _read_cifar_pickle(file: Path, what: str, limit: int) -> tuple[object, str, int]:
    """(the unpickled object, its ``cifar:<sha256>`` content id, the file's size) of a
    CIFAR python file, read whole (at most ``limit`` bytes) with :class:`_SafeUnpickler`."""
    if regular_file(file, what, DataError).st_size == 0:  # also /proc files, never opened
        raise _error(f"{what} {file} is empty (0 bytes): extract the archive again")
    raw = read_bytes(file, what, DataError, limit=limit)
    try:
        d = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:
        raise _error(f"{file} is not a readable {what} ({first_line(exc)}): extract the archive again") from None
    return d, "cifar:" + hashlib.sha256(raw).hexdigest(), len(raw)


def _cifar_arrays(d: object, file: Path, what: str, label_key: str, num_classes: int,
                  file_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 N,3,32,32, y int64) of an unpickled CIFAR batch, every field checked."""
    bad = f"{file} is not a readable {what}"
    if not isinstance(d, dict):
        raise _error(f"{bad} (it holds a {type(d).__name__}, not a dict): extract the archive again")
    data = d.get(b"data", d.get("data"))
    labels = d.get(label_key.encode(), d.get(label_key))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size % 3072 or not data.size:
        found = f"a {data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise _error(f"{bad} (its data is {found}, not uint8 rows of 3x32x32 pixels): extract the archive again")
    if data.nbytes > file_size:  # an array built without its bytes (numpy's _reconstruct alone)
        raise _error(f"{bad} (its data declares {_nbytes(data.nbytes)}, more than the file holds): extract the archive again")
    count = data.size // 3072
    if isinstance(labels, np.ndarray):
        labels_count = labels.shape[0] if labels.ndim else 1
    elif isinstance(labels, list):
        labels_count = len(labels)
    else:
        raise _error(f"{bad} (its labels are {type(labels).__name__}, not a list of integers): extract the archive again")
    if labels_count != count:
        raise _error(f"{file} holds {count} images but {labels_count} labels: extract the archive again")
    if isinstance(labels, list) and not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
        raise _error(f"{bad} (its labels are not all integers): extract the archive again")
    return data.reshape(-1, 3, 32, 32), _check_labels(np.asarray(labels), str(file), num_classes)


def _load_cifar(path: Path, name: str, n: int | None, seed: int | None, batch_size: int,
                prep: "Preprocessing | None" = None) -> Data:
    """CIFAR-10's ``cifar-10-batches-py``: its ``test_batch`` (10,000 images)."""
    batch = path / "test_batch"
    if not os.path.lexists(batch):
        raise _error(f"{path} has no test_batch: point --data at the extracted cifar-10-batches-py directory")
    d, content, size = _read_cifar_pickle(batch, "CIFAR-10 batch", CIFAR_BATCH_LIMIT)
    x, y = _cifar_arrays(d, batch, "CIFAR-10 batch", "labels", 10, size)
    return Data(name, y, _array_getter(x, name, prep=prep), 10, list(CIFAR10_CLASSES), _selection(len(y), n, seed),
                batch_size, seed, content=content)


def _is_cifar100(path: Path) -> bool:
    """A ``cifar-100-python`` directory: so named, or holding the files ``test`` and ``meta``."""
    return path.name == "cifar-100-python" or (os.path.lexists(path / "test") and os.path.lexists(path / "meta")
                                               and not (path / "test").is_dir())


def _cifar100_classes(meta: Path) -> list[str]:
    """The 100 fine class names of CIFAR-100's ``meta`` file."""
    if not os.path.lexists(meta):
        raise _error(f"{meta.parent} has no meta (CIFAR-100's class names): point --data at the extracted "
                     f"cifar-100-python directory")
    d, _, _ = _read_cifar_pickle(meta, "CIFAR-100 meta file", CIFAR_META_LIMIT)
    names = d.get(b"fine_label_names", d.get("fine_label_names")) if isinstance(d, dict) else None
    if not (isinstance(names, list) and len(names) == 100 and all(isinstance(v, (bytes, str)) for v in names)):
        found = f"{len(names)} items" if isinstance(names, list) else type(names).__name__
        raise _error(f"{meta} is not a readable CIFAR-100 meta file (its fine_label_names are {found}, not 100 "
                     f"names): extract the archive again")
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in names]


def _load_cifar100(path: Path, name: str, n: int | None, seed: int | None, batch_size: int,
                   prep: "Preprocessing | None" = None) -> Data:
    """CIFAR-100's ``cifar-100-python``: its ``test`` file (10,000 images, fine labels) and
    the class names from ``meta``."""
    test = path / "test"
    if not os.path.lexists(test):
        raise _error(f"{path} has no test file: point --data at the extracted cifar-100-python directory")
    classes = _cifar100_classes(path / "meta")
    d, content, size = _read_cifar_pickle(test, "CIFAR-100 file", CIFAR_BATCH_LIMIT)
    x, y = _cifar_arrays(d, test, "CIFAR-100 file", "fine_labels", 100, size)
    return Data(name, y, _array_getter(x, name, prep=prep), 100, classes, _selection(len(y), n, seed),
                batch_size, seed, content=content)


# --------------------------------------------------------------------------- ImageFolder
def _pil():
    from PIL import Image

    return Image


def _list_image_folder(path: Path) -> tuple[list[Path], list[int], list[str]]:
    try:
        class_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise read_error(path, exc, "data directory", DataError) from None
    files: list[Path] = []
    labels: list[int] = []
    empty: list[Path] = []
    for c, d in enumerate(class_dirs):
        found = 0
        try:
            entries = sorted(d.rglob("*"))
        except OSError as exc:
            raise read_error(d, exc, "class folder", DataError) from None
        except RecursionError:
            raise _error(f"class folder {d} is nested too deeply to list: flatten it to DIR/<class>/<image>") from None
        for f in entries:
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                st = f.stat()
            except OSError as exc:  # a dangling link, a name too long, ...
                raise _error(f"cannot access image {f} ({exc.strerror or first_line(exc)}): remove it or fix the link") from None
            kind = kind_of(st.st_mode)
            if kind == "a directory":
                continue
            if kind is not None:
                raise _error(f"image {f} is {kind}, not a regular file: remove it")
            files.append(f)
            labels.append(c)
            found += 1
            if len(files) > MAX_IMAGES:
                raise _error(f"{path} holds more than {MAX_IMAGES:,} images, the most armetrics reads from one "
                             f"source: split the data")
        if not found:
            empty.append(d)
    if not files:
        raise _error(
            f"{path} contains no images in class folders ({', '.join(IMAGE_EXTENSIONS[:3])}, ...): "
            f"arrange them as DIR/<class>/<image>"
        )
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise _error(f"class folder {empty[0]}{more} holds no images: add images or remove the folder "
                     f"(an empty class would still take a class index)")
    return files, labels, [d.name for d in class_dirs]


def _too_big(f: Path, w: int, h: int) -> DataError:
    return _error(f"image {f} is {w}x{h} ({w * h / 1e6:.1f} MP), more than the {MAX_IMAGE_PIXELS / 1e6:.0f} MP "
                  f"armetrics decodes: resize it to the input size of the model or remove it")


@contextlib.contextmanager
def _open_image(f: Path, cap: bool = True):
    """A PIL image with its header read and nothing decoded: a regular, non-empty file of
    one of :data:`IMAGE_FORMATS`, at most :data:`MAX_IMAGE_PIXELS` (with ``cap``)."""
    st = regular_file(f, "image", DataError)
    if st.st_size == 0:
        raise _error(f"image {f} is empty (0 bytes): remove or replace it")
    Image = _pil()
    try:
        fh = open(f, "rb")
    except OSError as exc:
        raise read_error(f, exc, "image", DataError) from None
    with fh:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(fh, formats=IMAGE_FORMATS)
        except Image.DecompressionBombError as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"{int(found.group(1)) / 1e6:.1f} MP" if found else "larger than PIL's decompression-bomb limit"
            raise _error(f"image {f} is {size}, more than the {MAX_IMAGE_PIXELS / 1e6:.0f} MP armetrics decodes: "
                         f"resize it to the input size of the model or remove it") from None
        except Exception as exc:
            raise _undecodable(f, exc) from None
        with im:
            w, h = im.size
            if cap and w * h > MAX_IMAGE_PIXELS:
                raise _too_big(f, w, h)
            yield im


def _undecodable(f: Path, exc: BaseException) -> DataError:
    if type(exc).__name__ == "UnidentifiedImageError":
        reason = "not a " + ", ".join(IMAGE_FORMATS[:-1]).replace("WEBP", "WebP") + f" or {IMAGE_FORMATS[-1]} image"
    else:
        reason = first_line(exc) if str(exc).strip() else type(exc).__name__
    return _error(f"cannot decode image {f} ({reason}): remove or replace it")


def _image_size(f: Path) -> tuple[int, int]:
    with _open_image(f, cap=False) as im:
        return tuple(im.size)


def _decode_image(f: Path, size: tuple[int, int], prep: "Preprocessing | None" = None) -> np.ndarray:
    """The pixels of image ``f`` (uint8 H,W,3), preprocessed with ``prep``; ``size``: its
    (width, height) when the data was loaded."""
    with _open_image(f) as im:
        if tuple(im.size) != size:
            raise _error(f"image {f} is now {im.size[0]}x{im.size[1]}, not the {size[0]}x{size[1]} it was when the "
                         f"data was loaded: load the data again")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", _pil().DecompressionBombWarning)
                rgb = im.convert("RGB")
                return np.asarray(rgb if prep is None else prep.apply(rgb), dtype=np.uint8)
        except Exception as exc:
            raise _undecodable(f, exc) from None


def _common_size(path: Path, files: list[Path], sizes: dict[int, tuple[int, int]], hint: str = "") -> tuple[int, int]:
    """The size the selected images share; the odd ones are named (``hint``: appended)."""
    (common, count), = collections.Counter(sizes.values()).most_common(1)
    odd = [i for i, s in sizes.items() if s != common]
    if odd:
        w, h = sizes[odd[0]]
        more = f" (and {len(odd) - 1} more images of other sizes)" if len(odd) > 1 else ""
        them = "them" if len(odd) > 1 else "it"
        are = "is" if count == 1 else "are"
        raise _error(f"image {files[odd[0]]} is {w}x{h}{more} but {count} of the {len(sizes)} selected images {are} "
                     f"{common[0]}x{common[1]}: resize {them} or remove {them}{hint}")
    if common[0] * common[1] > MAX_IMAGE_PIXELS:
        raise _too_big(files[next(iter(sizes))], *common)
    return common


def _check_resize(prep: "Preprocessing", what: str, w: int, h: int) -> None:
    """Refuse an image whose resize step would exceed :data:`MAX_IMAGE_PIXELS` (a 64,000x1
    image resized to a shorter side of 256 px would be 4 GP)."""
    rw, rh = prep.resized_size(w, h)
    if rw * rh > MAX_IMAGE_PIXELS:
        raise _error(f"{what} ({w}x{h} px) would be {rw}x{rh} ({rw * rh / 1e6:.1f} MP) after the resize of "
                     f"{prep.name}, more than the {MAX_IMAGE_PIXELS / 1e6:.0f} MP armetrics decodes: crop it to a less "
                     f"elongated shape or remove it")


def _output_size(path: Path, files: list[Path], sizes: dict[int, tuple[int, int]], prep: "Preprocessing | None",
                 hint: str = "") -> tuple[int, int]:
    """(width, height) of the images ``get`` returns: their common size without a
    preprocessing; with one, its output size (each image within the caps)."""
    if prep is None:
        return _common_size(path, files, sizes, hint)
    for i, (w, h) in sizes.items():
        if w * h > MAX_IMAGE_PIXELS:
            raise _too_big(files[i], w, h)
        _check_resize(prep, f"image {files[i]}", w, h)
    return prep.output_size(*next(iter(sizes.values())))


def _imagenet_labels(path: Path, labels: np.ndarray, classes: list[str]) -> tuple[np.ndarray, list[str]]:
    """Class folders named by ILSVRC-2012 WordNet ids (any subset of the 1000) are labelled
    with ImageNet's class indices and declare its 1000 classes; other folders keep their
    sorted order. Mixing the two is refused."""
    from . import imagenet

    index = imagenet.class_index()
    known = [c for c in classes if c in index]
    if not known:
        return labels, classes
    if len(known) == len(classes):
        return np.asarray([index[c] for c in classes], np.int64)[labels], list(imagenet.wnids())
    others = [c for c in classes if c not in index and not imagenet.looks_like_wnid(c)]
    if others:
        more = f" and {len(others) - 1} more" if len(others) > 1 else ""
        raise _error(f"{path} mixes ImageNet class folders ({known[0]}, ...) with other folders ({others[0]}{more}): "
                     f"remove them (ImageNet folders are labelled with ImageNet's 1000 class indices)")
    return labels, classes  # WordNet ids beyond ILSVRC-2012's (ImageNet-21k): a plain ImageFolder


def _images_digest(files: list[Path], labels: np.ndarray, order: np.ndarray) -> str:
    """SHA-256 over (label, SHA-256 of the file's bytes) of each selected image, in order."""
    h = hashlib.sha256(b"imagefolder\n")
    for i in order:
        f = files[int(i)]
        h.update(struct.pack("<q", int(labels[int(i)])))
        h.update(bytes.fromhex(_file_digest(f, what="image")))
    return "imagefolder:" + h.hexdigest()


def _load_image_folder(path: Path, name: str, n: int | None, seed: int | None, batch_size: int,
                       prep: "Preprocessing | None" = None) -> Data:
    files, label_list, classes = _list_image_folder(path)
    labels, classes = _imagenet_labels(path, np.asarray(label_list, dtype=np.int64), classes)
    order = _selection(len(files), n, seed)
    sizes = {int(i): _image_size(files[int(i)]) for i in np.unique(order)}  # headers only
    imagenet = len(classes) == 1000 and classes[0] == "n01440764"
    hint = (" (or pass --preprocess, e.g. Res256Crop224, to resize and crop them as the ImageNet zoo models "
            "expect)") if imagenet else ""
    w, h = _output_size(path, files, sizes, prep, hint)

    def get(idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), h, w, 3), np.uint8)
        for j, i in enumerate(idx):
            out[j] = _decode_image(files[int(i)], sizes[int(i)], prep)
        return out.transpose(0, 3, 1, 2).astype(np.float32) / 255.0

    return Data(name, labels, get, len(classes), classes, order, batch_size, seed,
                content=lambda: _images_digest(files, labels, order))


# ------------------------------------------------------------------------------ entry point
def _source_name(source) -> str:
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        shown = repr(source) if isinstance(source, (int, float)) and not isinstance(source, bool) else type(source).__name__
        raise ConfigError(f"data source must be {DEFAULT_SOURCE}, a directory or an .npz path (a str or Path), got "
                          f"{shown}: save arrays with numpy.savez('d.npz', x=..., y=...) and pass the path")
    if not source.strip():
        raise ConfigError(f"data source is empty: give {DEFAULT_SOURCE}, an ImageFolder or cifar-10-batches-py "
                          f"directory, or an .npz file")
    return source


#: What to pass for a dataset armetrics ships no sample of (a name given as ``--data``).
DATASET_SOURCES = {
    "cifar10": "pass --data cifar10-sample (packaged: 1,000 test images) or --data path/to/cifar-10-batches-py "
               "(from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extracted)",
    "cifar100": "pass --data path/to/cifar-100-python (from https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, "
                "extracted)",
    "imagenet": "pass --data path/to/imagenet/val (ILSVRC-2012 validation images in one folder per WordNet id, "
                "n01440764/..., or any subset of those folders; from https://image-net.org/download-images.php)",
    "cifar10c": "pass --data path/to/CIFAR-10-C --corruption NAME --severity 1..5 (from "
                "https://zenodo.org/records/2535967, CIFAR-10-C.tar extracted)",
    "cifar100c": "pass --data path/to/CIFAR-100-C --corruption NAME --severity 1..5 (from "
                 "https://zenodo.org/records/3555552, CIFAR-100-C.tar extracted)",
    "imagenetc": "pass --data path/to/ImageNet-C --corruption NAME --severity 1..5 (<corruption>/<severity>/<wnid>/"
                 "*.JPEG, from https://zenodo.org/records/2235448, extracted)",
}
_DATASET_ALIASES = {"cifar": "cifar10", "imagenet1k": "imagenet", "ilsvrc2012": "imagenet", "imagenetval": "imagenet"}


def no_sample_error(dataset: str) -> DataError | None:
    """The error for a dataset name with no packaged sample (``cifar100``, ``imagenet-sample``,
    ``CIFAR-10-C``, ...), saying what to pass; None for other names."""
    key = re.sub(r"[-_ ]", "", dataset.strip().lower())
    key = key[:-len("sample")] if key.endswith("sample") and key != "sample" else key
    key = _DATASET_ALIASES.get(key, key)
    if key not in DATASET_SOURCES:
        return None
    if key == "cifar10":
        return _error(f"data source {dataset!r} is not a file or directory: {DATASET_SOURCES[key]}")
    label = {"cifar10c": "CIFAR-10-C", "cifar100c": "CIFAR-100-C", "imagenetc": "ImageNet-C"}.get(key, key)
    return _error(f"{label} has no packaged sample: {DATASET_SOURCES[key]}")


def load_data(source: "str | Path | Data" = DEFAULT_SOURCE, n: int | None = None, batch_size: int = 256,
              seed: int | None = 0, *, preprocess: "str | None" = None, corruption: str | None = None,
              severity: int | None = None) -> Data:
    """Open a data source. ``n``: how many images (default all); ``seed``: which ones and
    in which order (a seeded permutation; ``None`` keeps the source's order).
    ``preprocess``: a :mod:`armetrics.preprocess` name (``Res256Crop224``, ...; None or
    ``"none"``: images as they are), applied to each image as it is read.
    ``corruption``, ``severity`` (1..5): one track of a CIFAR-10-C, CIFAR-100-C or
    ImageNet-C directory (:mod:`armetrics.corruptions`).

    Bad arguments raise :class:`~armetrics.errors.ConfigError`, bad sources
    :class:`~armetrics.errors.DataError`, each with a one-line message."""
    if isinstance(source, Data):
        return source
    from . import corruptions, preprocess as preprocessing

    name = _source_name(source)
    if n is not None:
        n = checks.integer(n, "-n", minimum=1)
    batch_size = checks.integer(batch_size, "--batch-size", minimum=1)
    seed = checks.seed(seed)
    prep = preprocessing.resolve(preprocess)
    corruption, severity = corruptions.check_options(corruption, severity)
    data = _open(name, n, seed, batch_size, prep, corruption, severity)
    data.info.preprocessing = prep.name if prep is not None else None
    data.info.corruption, data.info.severity = corruption, severity
    return data


def _open(name: str, n: int | None, seed: int | None, batch_size: int, prep: "Preprocessing | None",
          corruption: str | None, severity: int | None) -> Data:
    """The source ``name`` (arguments checked) as a Data: which kind of source it is decides."""
    from . import corruptions

    if name == DEFAULT_SOURCE and corruption is not None:
        raise _error(f"the packaged {DEFAULT_SOURCE} has no corruptions: pass --data path/to/CIFAR-10-C (from "
                     f"https://zenodo.org/records/2535967, CIFAR-10-C.tar extracted) with --corruption {corruption}")
    if name == DEFAULT_SOURCE:
        ref = resources.files("armetrics") / "_data" / "cifar10_sample.npz"
        with resources.as_file(ref) as p:
            return _load_npz(Path(p), name, n, seed, batch_size, packaged=True, prep=prep)
    path = Path(name)
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError) as exc:
        raise _error(f"cannot access data source {name} ({first_line(exc)}): check the path") from None
    if not exists:
        raise no_sample_error(name) or _error(
            f"data source {name!r} does not exist: give cifar10-sample, an ImageFolder, cifar-10-batches-py or "
            f"cifar-100-python directory, or an .npz file")
    if corruption is not None:
        if not is_dir:
            raise _error(f"--corruption {corruption} needs a CIFAR-10-C, CIFAR-100-C or ImageNet-C directory, not "
                         f"{name}: pass --data path/to/CIFAR-10-C (labels.npy and one .npy per corruption) or "
                         f"path/to/ImageNet-C")
        return corruptions.load(path, name, corruption, severity, n, seed, batch_size, prep)
    if is_dir:
        if os.path.lexists(path / "test_batch") or path.name == "cifar-10-batches-py":
            return _load_cifar(path, name, n, seed, batch_size, prep)
        if _is_cifar100(path):
            return _load_cifar100(path, name, n, seed, batch_size, prep)
        root = corruptions.root_error(path)
        if root is not None:
            raise root
        return _load_image_folder(path, name, n, seed, batch_size, prep)
    if path.suffix.lower() == ".npz":
        return _load_npz(path, name, n, seed, batch_size, prep=prep)
    raise _error(f"data source {name} is neither a directory nor an .npz file: see `armetrics analyze --help`")
