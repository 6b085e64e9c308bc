"""Architectures of the example checkpoints (``--arch examples/models.py:small_cnn``)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def small_cnn(num_classes: int = 10, width: int = 16) -> nn.Sequential:
    """A compact VGG-style CIFAR-10 network with BatchNorm (input 3x32x32 in [0, 1]).

    conv-bn-relu x2, maxpool, x2, maxpool, x1, maxpool, global average pool, linear.
    Layer names are ``features.<i>`` and ``classifier``; width 16 has 36k parameters.
    """
    w = width
    layers = _block(3, w) + _block(w, w) + [nn.MaxPool2d(2)]
    layers += _block(w, 2 * w) + _block(2 * w, 2 * w) + [nn.MaxPool2d(2)]
    layers += _block(2 * w, 4 * w) + [nn.MaxPool2d(2)]
    return nn.Sequential(OrderedDict(
        features=nn.Sequential(*layers),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        classifier=nn.Linear(4 * w, num_classes),
    ))
