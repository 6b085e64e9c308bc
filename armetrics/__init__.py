"""armetrics: measure what adversarial training does to a trained network.

    import armetrics as am
    model = am.load_model("cnn.pt", arch="nets.py:make_model")
    report = am.analyze(model, "cifar10-sample", probes=["accuracy"])

Attributes are imported lazily, so ``import armetrics`` does not import torch or
robustbench until they are used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "armetrics.loading",
    "load_data": "armetrics.data",
    "analyze": "armetrics.engine",
    "Report": "armetrics.report",
    "Probe": "armetrics.probe",
    "ProbeResult": "armetrics.probe",
    "Batch": "armetrics.probe",
    "Context": "armetrics.probe",
    "register_probe": "armetrics.registry",
    "get_probe": "armetrics.registry",
    "list_probes": "armetrics.registry",
    "ArmetricsError": "armetrics.errors",
}
_SUBMODULES = {"linalg", "stats", "attacks", "errors", "checks", "data", "loading", "engine", "report", "registry", "probes", "hooks"}

__all__ = sorted(_EXPORTS) + ["__version__"]


# compare is light (no torch, no matplotlib at import): imported eagerly so that the
# package attribute ``compare`` is the function, not the submodule of the same name
from .compare import compare  # noqa: E402

__all__.append("compare")


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"armetrics.{name}")
    raise AttributeError(f"module 'armetrics' has no attribute {name!r}")


def __dir__():
    return __all__
