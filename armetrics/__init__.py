"""armetrics: measure what adversarial training does to a trained network.

    import armetrics as am
    model = am.load_model("cnn.pt", arch="nets.py:make_model")
    report = am.analyze(model, "cifar10-sample", probes=["accuracy"])

Attributes are imported lazily, so ``import armetrics`` does not import torch or
robustbench until they are used. ``armetrics.compare`` is the function (the module is
:mod:`armetrics.comparison`); every submodule is also an attribute.
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
    "compare": "armetrics.comparison",
    "audit": "armetrics.auditing",
    "estimate": "armetrics.estimation",
    "Estimate": "armetrics.estimation",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and name in _submodules():
        return importlib.import_module(f"armetrics.{name}")
    raise AttributeError(f"module 'armetrics' has no attribute {name!r}")


def _submodules() -> set[str]:
    """Every public submodule (found, not listed): ``armetrics.<m>`` is the module whether
    or not it was imported yet. No name in ``_EXPORTS`` is a submodule's name."""
    import pkgutil

    return {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}


def __dir__():
    return __all__
