"""The only module that imports robustbench, lazily, absorbing its PyPI faults.

robustbench 1.1.1 (PyPI) imports ``pkg_resources`` (removed from setuptools >= 81;
the package pins ``setuptools<81``) and ``autoattack``, while its dependency installs
that module as ``pyautoattack``. :func:`import_robustbench` maps every
``autoattack[.x]`` import onto ``pyautoattack[.x]`` before importing robustbench.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from .errors import LoadError, one_line
from .safeio import regular_file


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolve ``autoattack`` and its submodules to the installed ``pyautoattack``."""

    alias, target = "autoattack", "pyautoattack"

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.alias or fullname.startswith(self.alias + "."):
            if importlib.util.find_spec(self.target) is None:
                return None
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(self.target + spec.name[len(self.alias):])
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module):  # already executed as pyautoattack
        pass


def install_autoattack_alias() -> None:
    """Make ``import autoattack`` work when only ``pyautoattack`` is installed."""
    try:
        if importlib.util.find_spec("autoattack") is not None:
            return
    except (ImportError, ValueError):
        pass
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())


def import_robustbench():
    """Import and return the ``robustbench`` package, with one-line errors."""
    install_autoattack_alias()
    try:
        with warnings.catch_warnings():  # its pkg_resources / torch.jit deprecation notices
            warnings.simplefilter("ignore")
            import robustbench  # noqa: F401
            import robustbench.utils  # noqa: F401
            from robustbench.model_zoo import model_dicts  # noqa: F401
    except ImportError as exc:
        if "pkg_resources" in str(exc):
            raise LoadError(
                "robustbench needs pkg_resources, which setuptools>=81 removed: "
                "run `pip install 'setuptools<81'`"
            ) from exc
        raise LoadError(f"cannot import robustbench ({exc}): run `pip install robustbench`") from exc
    return sys.modules["robustbench"]


@contextlib.contextmanager
def _quiet():
    """robustbench's and timm's deprecation notices (``torch.jit.interface``, pickle
    protocols) stay off the user's stderr unless ``ARMETRICS_DEBUG`` is set."""
    if os.environ.get("ARMETRICS_DEBUG"):
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def parse_name(spec: str, dataset: str = "cifar10", threat_model: str = "Linf") -> tuple[str, str, str]:
    """``robustbench:NAME`` or ``robustbench:DATASET/THREAT/NAME`` -> (dataset, threat, name)."""
    body = spec.split(":", 1)[1] if spec.startswith("robustbench:") else spec
    parts = body.split("/")
    if len(parts) == 1 and parts[0]:
        return dataset, threat_model, parts[0]
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    raise LoadError(
        f"malformed RobustBench name {spec!r}: write robustbench:NAME or robustbench:DATASET/THREAT/NAME"
    )


def _zoo(dataset: str, threat_model: str) -> dict[str, Any]:
    rb = import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    try:
        ds, tm = BenchmarkDataset(dataset), ThreatModel(threat_model)
    except ValueError:
        raise LoadError(
            f"RobustBench has no dataset/threat model {dataset}/{threat_model}: datasets "
            f"{', '.join(d.value for d in BenchmarkDataset)}; threat models "
            f"{', '.join(t.value for t in ThreatModel)}"
        ) from None
    del rb
    return model_dicts.get(ds, {}).get(tm, {})


def zoo_names(dataset: str = "cifar10", threat_model: str = "Linf") -> list[str]:
    """Names of the models robustbench knows for a dataset and threat model."""
    return sorted(_zoo(dataset, threat_model))


def _entry(name: str, dataset: str, threat_model: str) -> dict[str, Any]:
    zoo = _zoo(dataset, threat_model)
    if name not in zoo:
        import difflib

        close = difflib.get_close_matches(name, list(zoo), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise LoadError(
            f"RobustBench has no model {name!r} for {dataset}/{threat_model}: {hint}"
            f"see `armetrics zoo --dataset {dataset} --threat-model {threat_model}`"
        )
    return zoo[name]


def architecture(name: str, dataset: str = "cifar10", threat_model: str = "Linf"):
    """A fresh (randomly initialised) instance of a zoo model's architecture."""
    factory = _entry(name, dataset, threat_model)["model"]
    with _quiet():
        return factory()


def weight_paths(name: str, model_dir: str | Path, dataset: str, threat_model: str) -> list[Path]:
    """Where robustbench looks for this model's weights (``DIR/<dataset>/<threat>/<NAME>.pt``;
    ensembles use ``<NAME>.pt_m<i>.pt``)."""
    base = Path(model_dir) / dataset / threat_model / f"{name}.pt"
    gdrive = _entry(name, dataset, threat_model).get("gdrive_id")
    if isinstance(gdrive, list):
        return [Path(f"{base}_m{i}.pt") for i in range(len(gdrive))]
    return [base]


def load(name: str, model_dir: str | Path, dataset: str, threat_model: str):
    """Load a zoo model through robustbench's own ``load_model`` from ``model_dir``.

    Never downloads: when a weight file is absent, raises a LoadError naming the
    path where it must be placed; a weight path that is not a regular file (a FIFO, a
    device) is refused before anything opens it. The caller checks the files' formats.
    """
    rb = import_robustbench()
    paths = weight_paths(name, model_dir, dataset, threat_model)
    missing = [p for p in paths if not p.exists() and not p.is_symlink()]
    for p in paths:  # a FIFO or a device would block or stream forever: refuse it unopened
        if p not in missing:
            regular_file(p, "RobustBench weight file", LoadError)
    if missing:
        raise LoadError(
            f"weights of RobustBench model {name!r} are not in --model-dir and this machine "
            f"cannot download them: place the file at {one_line(str(missing[0]))}"
        )
    import timm

    timm_name = f"{name.lower().replace('-', '_')}_{dataset.lower()}_{threat_model.lower()}"
    with _quiet():
        if timm.is_model(timm_name):
            # robustbench would fetch these from the hub; build without weights, load the file
            return timm.create_model(timm_name, pretrained=False, checkpoint_path=str(paths[0])).eval()
        return rb.utils.load_model(model_name=name, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model)
