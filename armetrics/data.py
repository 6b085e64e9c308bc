"""A data source -> batches of ``(x in [0, 1] float32 NCHW, y int64)``.

Sources: ``cifar10-sample`` (1,000 CIFAR-10 test images, 100 per class, shipped in
the package; the default), an ImageFolder directory (``DIR/<class>/<image>``, classes
in sorted order), a ``cifar-10-batches-py`` directory (its ``test_batch``), or an
``.npz`` with ``x`` (uint8 NHWC, or float NCHW in [0, 1]) and ``y``.

Images stay compact (uint8 arrays or file paths) and are decoded batch by batch, so
memory does not grow with the data beyond the source itself.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .errors import DataError

DEFAULT_SOURCE = "cifar10-sample"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class DataInfo:
    """The data section of a report."""

    source: str
    n: int
    seed: int | None
    num_classes: int
    classes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class Data:
    """A fixed, seeded selection of labelled images, iterated in batches.

    ``get(indices)`` returns float32 NCHW in [0, 1] for positions into the *source*;
    ``order`` is the selection (which images, in which order).
    """

    def __init__(self, source: str, labels: np.ndarray, get: Callable[[np.ndarray], np.ndarray],
                 num_classes: int, classes: Sequence[str], order: np.ndarray, batch_size: int, seed: int | None):
        self.source = source
        self._labels = labels
        self._get = get
        self.order = order
        self.batch_size = batch_size
        self.info = DataInfo(source, len(order), seed, num_classes, list(classes))

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


# ------------------------------------------------------------------------- array sources
def _array_getter(x: np.ndarray, source: str) -> Callable[[np.ndarray], np.ndarray]:
    if x.ndim != 4:
        raise DataError(f"{source}: x must be 4-D (N,H,W,C uint8 or N,C,H,W float), got shape {x.shape}")
    if x.dtype == np.uint8:
        if x.shape[-1] not in (1, 3, 4) and x.shape[1] in (1, 3, 4):
            return lambda idx: x[idx].astype(np.float32) / 255.0  # uint8 NCHW
        return lambda idx: x[idx].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    if np.issubdtype(x.dtype, np.floating):
        lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-6 or hi > 1 + 1e-6:
            raise DataError(f"{source}: float images must lie in [0, 1], found [{lo:.3g}, {hi:.3g}]: scale them to [0, 1]")
        return lambda idx: x[idx].astype(np.float32)
    raise DataError(f"{source}: x has dtype {x.dtype}: use uint8 (0-255) or float in [0, 1]")


def _check_labels(y: np.ndarray, source: str, num_classes: int | None = None) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{source}: labels must be 1-D, got shape {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer)):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{source}: labels must be integers, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise DataError(f"{source}: labels out of range (found {int(y.min())}): labels must be 0..K-1")
    if num_classes is not None and y.size and y.max() >= num_classes:
        raise DataError(f"{source}: label {int(y.max())} out of range for {num_classes} classes: labels must be 0..{num_classes - 1}")
    return y.astype(np.int64)


def _from_npz(path: Path) -> tuple:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise DataError(f"{path}: an .npz data file needs arrays 'x' and 'y' (found {', '.join(f.files) or 'none'})")
            x, y = f["x"], f["y"]
            classes = [str(c) for c in f["classes"]] if "classes" in f else []
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path} is not a readable .npz file ({str(exc).splitlines()[0][:120]}): save it again with numpy.savez") from None
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} images but y has {len(y)} labels")
    y = _check_labels(y, str(path), len(classes) or None)
    num_classes = len(classes) or (int(y.max()) + 1 if y.size else 0)
    return x, y, num_classes, classes


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's python batches: numpy arrays, lists, dicts, bytes; nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _from_cifar_batches(path: Path) -> tuple:
    batch = path / "test_batch"
    if not batch.is_file():
        raise DataError(f"{path} has no test_batch: point --data at the extracted cifar-10-batches-py directory")
    try:
        with open(batch, "rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[b"labels"])
    except Exception as exc:
        raise DataError(f"{batch} is not a readable CIFAR-10 batch ({exc}): extract the archive again") from None
    return data, _check_labels(y, str(batch), 10), 10, list(CIFAR10_CLASSES)


def _from_image_folder(path: Path) -> tuple:
    class_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    for c, d in enumerate(class_dirs):
        for f in sorted(d.rglob("*")):
            if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                files.append(f)
                labels.append(c)
    if not files:
        raise DataError(
            f"{path} contains no images in class folders ({', '.join(IMAGE_EXTENSIONS[:3])}, ...): "
            f"arrange them as DIR/<class>/<image>"
        )
    shape: list = []

    def get(idx: np.ndarray) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        out = []
        for i in idx:
            f = files[int(i)]
            try:
                with Image.open(f) as im:
                    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                raise DataError(f"cannot decode image {f} ({exc}): remove or replace it") from None
            if not shape:
                shape.append(arr.shape)
            elif arr.shape != shape[0]:
                raise DataError(
                    f"image {f} is {arr.shape[1]}x{arr.shape[0]} but the others are "
                    f"{shape[0][1]}x{shape[0][0]}: resize the images to one size"
                )
            out.append(arr)
        return np.stack(out).transpose(0, 3, 1, 2).astype(np.float32) / 255.0

    return get, np.asarray(labels, dtype=np.int64), len(class_dirs), [d.name for d in class_dirs]


def load_data(source: "str | Path | Data" = DEFAULT_SOURCE, n: int | None = None, batch_size: int = 256,
              seed: int | None = 0) -> Data:
    """Open a data source. ``n``: how many images (default all); ``seed``: which ones and
    in which order (a seeded permutation; ``None`` keeps the source's order)."""
    if isinstance(source, Data):
        return source
    if n is not None and n <= 0:
        raise DataError(f"-n must be a positive number of images, got {n}")
    if batch_size <= 0:
        raise DataError(f"--batch-size must be positive, got {batch_size}")
    name = str(source)
    if name == DEFAULT_SOURCE:
        ref = resources.files("armetrics") / "_data" / "cifar10_sample.npz"
        with resources.as_file(ref) as p:
            x, y, k, classes = _from_npz(Path(p))
        get = _array_getter(x, name)
    else:
        path = Path(name)
        if not path.exists():
            raise DataError(f"data source {name!r} does not exist: give cifar10-sample, an ImageFolder or cifar-10-batches-py directory, or an .npz file")
        if path.is_dir():
            if (path / "test_batch").exists() or path.name == "cifar-10-batches-py":
                x, y, k, classes = _from_cifar_batches(path)
                get = _array_getter(x, name)
            else:
                get, y, k, classes = _from_image_folder(path)
        elif path.suffix == ".npz":
            x, y, k, classes = _from_npz(path)
            get = _array_getter(x, name)
        else:
            raise DataError(f"data source {name} is neither a directory nor an .npz file: see `armetrics analyze --help`")
    if len(y) == 0:
        raise DataError(f"data source {name} holds no images")
    order = np.arange(len(y)) if seed is None else np.random.default_rng(seed).permutation(len(y))
    if n is not None:
        order = order[:n]
    return Data(name, y, get, k, classes, order, batch_size, seed)
