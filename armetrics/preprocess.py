"""Resizing and cropping of images before a model sees them, named as RobustBench names them.

A RobustBench zoo entry records the preprocessing its accuracy was measured with
(``model_dicts[...]["preprocessing"]``; ImageNet entries only): ``Res256Crop224`` (resize
the shorter side to 256 px, bilinear, then crop the central 224x224), ``BicubicRes256Crop224``
(the same, bicubic), ``Res224`` (resize to 224x224, bilinear, ignoring the aspect ratio) and
``Crop288`` (crop the central 288x288). ``none`` (or None) keeps images as they are.

The same pattern with other sizes is accepted (``BicubicRes248Crop224``, ``Crop256``):
``[Bicubic]Res<N>Crop<M>`` resizes the shorter side to N then crops MxM; ``[Bicubic]Res<N>``
alone resizes to NxN; ``Crop<M>`` crops MxM. Sizes are 1..:data:`MAX_SIDE` px; names are
matched without regard to case.

The operations are torchvision's ``Resize`` / ``CenterCrop`` on PIL images, written out
(PIL's resampling, which always antialiases, and torchvision's size and offset rounding;
a crop larger than the image pads it with zeros as ``CenterCrop`` does), so pixels equal
RobustBench's ``PREPROCESSINGS[name]`` before its ``ToTensor``. Values stay in [0, 1]
(``ToTensor``'s division by 255); the models normalize inside. PIL is imported on first use.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError, one_line, shorten

#: RobustBench's preprocessing names (``robustbench.data.PREPROCESSINGS``), and ``none``.
NAMES = ("none", "Res256Crop224", "BicubicRes256Crop224", "Res224", "Crop288")
#: Largest resize or crop side, in pixels.
MAX_SIDE = 4096

_GRAMMAR = re.compile(r"(bicubic)?(?:res(\d{1,5}))?(?:crop(\d{1,5}))?", re.IGNORECASE)


@dataclass(frozen=True)
class Preprocessing:
    """One preprocessing: ``resize`` px (the shorter side when ``crop`` is set, else both
    sides; None: no resize), then a central ``crop`` x ``crop`` px (None: no crop);
    ``bicubic`` interpolation (else bilinear)."""

    name: str
    resize: int | None
    crop: int | None
    bicubic: bool = False

    def resized_size(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) in px after the resize step of a ``w`` x ``h`` image
        (torchvision's ``_compute_resized_output_size``)."""
        if self.resize is None:
            return w, h
        if self.crop is None:
            return self.resize, self.resize
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize, int(self.resize * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)

    def output_size(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) in px of the result for a ``w`` x ``h`` image."""
        return (self.crop, self.crop) if self.crop is not None else self.resized_size(w, h)

    def apply(self, im):
        """A PIL image (any mode: RGB, L, F) resized and cropped."""
        if self.resize is not None:
            size = self.resized_size(*im.size)
            if size != tuple(im.size):
                Image = _pil()
                im = im.resize(size, Image.BICUBIC if self.bicubic else Image.BILINEAR)
        if self.crop is not None:
            im = _center_crop(im, self.crop)
        return im

    def apply_uint8(self, hwc: np.ndarray) -> np.ndarray:
        """One uint8 image, H x W x C, preprocessed (uint8, H' x W' x C)."""
        Image = _pil()
        if hwc.shape[2] == 3:
            return np.asarray(self.apply(Image.fromarray(np.ascontiguousarray(hwc), "RGB")), dtype=np.uint8)
        planes = [np.asarray(self.apply(Image.fromarray(np.ascontiguousarray(hwc[:, :, c]), "L")), dtype=np.uint8)
                  for c in range(hwc.shape[2])]  # PIL resamples the bands of RGB alike, one by one
        return np.stack(planes, axis=2)

    def apply_float(self, chw: np.ndarray) -> np.ndarray:
        """One float image in [0, 1], C x H x W, preprocessed (float32 in [0, 1], C x H' x W';
        bicubic overshoot is clipped)."""
        Image = _pil()
        planes = [np.asarray(self.apply(Image.fromarray(np.ascontiguousarray(p, dtype=np.float32), "F")),
                             dtype=np.float32) for p in chw]
        return np.clip(np.stack(planes, axis=0), 0.0, 1.0)


def _pil():
    from PIL import Image

    return Image


def _center_crop(im, size: int):
    """torchvision's ``center_crop`` on a PIL image: zero padding where the image is smaller,
    then the central ``size`` x ``size`` px (offsets rounded as it rounds them)."""
    w, h = im.size
    if size > w or size > h:
        left, top = ((size - w) // 2 if size > w else 0), ((size - h) // 2 if size > h else 0)
        canvas = _pil().new(im.mode, (max(w, size), max(h, size)), 0)
        canvas.paste(im, (left, top))
        im = canvas
        w, h = im.size
        if (w, h) == (size, size):
            return im
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return im.crop((left, top, left + size, top + size))


def resolve(value: Any, what: str = "--preprocess") -> Preprocessing | None:
    """The preprocessing a name stands for; None for ``none``/None. A name that is not one
    raises :class:`~armetrics.errors.ConfigError` naming the ones there are."""
    if value is None or isinstance(value, Preprocessing):
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a preprocessing name such as 'Res256Crop224', got {type(value).__name__}")
    text = value.strip()
    if text.lower() == "none":
        return None
    m = _GRAMMAR.fullmatch(text)
    if m is None or not (m.group(2) or m.group(3)) or (m.group(1) and not m.group(2)):
        close = difflib.get_close_matches(text, NAMES, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{what} {one_line(shorten(text))!r} is not a preprocessing{hint}: use one of "
                          f"{', '.join(NAMES)}, or [Bicubic]Res<N>Crop<M>, Res<N>, Crop<M> with other sizes")
    resize, crop = (int(g) if g else None for g in (m.group(2), m.group(3)))
    for side in (resize, crop):
        if side is not None and not 1 <= side <= MAX_SIDE:
            raise ConfigError(f"{what} {one_line(shorten(text))!r}: sizes must be 1..{MAX_SIDE} px, got {side}")
    name = ("Bicubic" if m.group(1) else "") + (f"Res{resize}" if resize else "") + (f"Crop{crop}" if crop else "")
    return Preprocessing(name, resize, crop, bool(m.group(1)))
