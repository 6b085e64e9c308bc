"""Plain helpers shared by the tests, for what is needed at import time (module-level
constants, ``pytest.mark.parametrize`` arguments, ``--arch`` files).

Test functions get these through the fixtures in ``conftest.py`` instead. Test modules
import this module by its unique top-level name, ``import armetrics_testkit`` (pytest puts
``tests/`` on ``sys.path``), never ``conftest`` (pytest imports that itself, and a second
import by name can make a second module object) and never ``tests.x`` (robustbench
installs a top-level ``tests`` package into site-packages).

This file imports only torch, so it also serves as a light ``--arch`` file:
``--arch tests/armetrics_testkit.py:make_tiny_net`` (``TINY_ARCH``), in this process or in
a subprocess that lacks ``tests/`` on ``sys.path``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

TESTKIT_PATH = Path(__file__).resolve()
TESTS_DIR = TESTKIT_PATH.parent
ROOT = TESTS_DIR.parent
EXAMPLES = ROOT / "examples"
CHECKPOINTS = EXAMPLES / "checkpoints"
TINY_ARCH = f"{TESTKIT_PATH}:make_tiny_net"


class TinyNet(nn.Module):
    """conv-bn-relu-pool-linear on 3x8x8 inputs, 10 classes."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.relu(self.bn(self.conv(x))))))


def make_tiny_net(num_classes: int = 10) -> nn.Module:
    """Architecture callable used as ``--arch tests/armetrics_testkit.py:make_tiny_net``
    (``TINY_ARCH``)."""
    torch.manual_seed(0)
    return TinyNet(num_classes)
