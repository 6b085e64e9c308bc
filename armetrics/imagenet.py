"""ImageNet's 1000 ILSVRC-2012 classes, as the zoo's models number them.

A model trained on ImageNet-1k outputs 1000 logits; logit ``i`` is the class whose
WordNet id (``n01440764``, ...) is the ``i``-th of the 1000 ids in sorted order (the
order of torchvision's ``ImageFolder`` on the full training set, of RobustBench's
``imagenet_class_to_id_map.json`` and of timm's ``imagenet_synsets.txt``, which agree).
The list is packaged (``armetrics/_data/imagenet_wnids.json``, 13 KB), so an ImageFolder
holding any subset of the class folders is labelled with the standard indices, offline.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources

#: How many classes ILSVRC-2012 has.
NUM_CLASSES = 1000
#: The shape of a WordNet noun id: ``n`` and eight digits.
WNID_PATTERN = re.compile(r"n\d{8}")


@functools.lru_cache(maxsize=1)
def wnids() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 WordNet ids in class-index order (sorted)."""
    text = (resources.files("armetrics") / "_data" / "imagenet_wnids.json").read_text(encoding="utf-8")
    ids = tuple(json.loads(text))
    if len(ids) != NUM_CLASSES or list(ids) != sorted(set(ids)):  # a damaged install, not user input
        raise RuntimeError("armetrics/_data/imagenet_wnids.json is damaged: reinstall armetrics")
    return ids


@functools.lru_cache(maxsize=1)
def class_index() -> dict[str, int]:
    """WordNet id -> class index (0..999)."""
    return {w: i for i, w in enumerate(wnids())}


def looks_like_wnid(name: str) -> bool:
    """Whether ``name`` has the form of a WordNet noun id (any of ImageNet-21k's, too)."""
    return WNID_PATTERN.fullmatch(name) is not None
