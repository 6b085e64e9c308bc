"""The only module that imports robustbench, lazily, absorbing its PyPI faults.

robustbench 1.1.1 (PyPI) imports ``pkg_resources`` (removed from setuptools >= 81;
the package pins ``setuptools<81``) and ``autoattack``, while its dependency installs
that module as ``pyautoattack``. :func:`import_robustbench` maps every
``autoattack[.x]`` import onto ``pyautoattack[.x]`` before importing robustbench.

Zoo entries are built and loaded the way robustbench's own ``load_model`` builds and
loads them, but offline and with armetrics' safe reader (the caller's ``read``):

- the zoo is ``robustbench.model_zoo.model_dicts`` (every dataset and threat model);
- an entry whose ``<name>_<dataset>_<threat>`` timm name is registered (the XCiT, DeiT
  and AlexNet entries) is built with ``timm.create_model`` as robustbench does, since
  their ``model_dicts`` constructors name unregistered models; every other entry with
  its ``model_dicts`` constructor;
- pretrained weights a constructor asks timm or torchvision for are captured, never
  downloaded (:func:`_offline`); where robustbench would return those downloaded
  weights (timm entries, ImageNet ``Standard_*``) they come from the weight file;
- a weight file is unwrapped (:data:`CHECKPOINT_KEYS`), its ``module.``/``model.``
  prefixes aligned to the architecture, Swin checkpoints renamed with timm's
  ``checkpoint_filter_fn`` (ImageNet), ensembles spread over their members as
  robustbench spreads them, and loaded with robustbench's ``_safe_load_state_dict``
  (its tolerance for the normalization buffers some checkpoints lack).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.metadata
import importlib.util
import io
import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from .errors import LoadError, first_line, one_line
from .safeio import regular_file

#: Wrapper keys of a zoo checkpoint, unwrapped in this order (robustbench takes ``last``
#: from Andriushchenko2020Understanding's and Kireev2021Effectiveness_*'s files).
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "last", "model", "net")
#: Buffers of robustbench's ``normalize_model`` wrapper (fixed constants, not weights).
WRAPPER_BUFFERS = frozenset({"normalize.mean", "normalize.std"})
#: Classes per dataset (robustbench's ``DATASET_CLASSES``), passed to timm entries.
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
#: How a Google Drive id is fetched (what ``gdown.download(id=...)`` requests).
GDRIVE_URL = "https://drive.google.com/uc?id={}"


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


def versions() -> str:
    """``robustbench 1.1.1, timm 1.0.9, torch 2.x``: the packages that build zoo entries."""
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return ", ".join(f"{p} {version(p)}" for p in ("robustbench", "timm", "torch"))


@contextlib.contextmanager
def _quiet():
    """robustbench's and timm's deprecation notices (``torch.jit.interface``, pickle
    protocols), timm's log records and what constructors print (MixedNUTS prints its
    parameter counts: stdout is for reports) stay off the terminal unless
    ``ARMETRICS_DEBUG`` is set (then prints go to stderr)."""
    if os.environ.get("ARMETRICS_DEBUG"):
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    timm_log = logging.getLogger("timm")
    level = timm_log.level
    timm_log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        timm_log.setLevel(level)


# --------------------------------------------------------------------------- names
def canonical_threat(threat_model: str) -> str:
    """``corruptions_3d`` -> ``corruptions``: robustbench keeps those models (and their
    weight folder) under ``corruptions``, as its ``load_model`` does."""
    return "corruptions" if threat_model == "corruptions_3d" else threat_model


def parse_name(spec: str, dataset: str = "cifar10", threat_model: str = "Linf") -> tuple[str, str, str]:
    """``robustbench:NAME`` or ``robustbench:DATASET/THREAT/NAME`` -> (dataset, threat, name)."""
    body = spec.split(":", 1)[1] if spec.startswith("robustbench:") else spec
    parts = body.split("/")
    if len(parts) == 1 and parts[0]:
        return dataset, canonical_threat(threat_model), parts[0]
    if len(parts) == 3 and all(parts):
        return parts[0], canonical_threat(parts[1]), parts[2]
    raise LoadError(
        f"malformed RobustBench name {spec!r}: write robustbench:NAME or robustbench:DATASET/THREAT/NAME"
    )


def _check_names(dataset: str | None, threat_model: str | None, listing: bool = False) -> None:
    """LoadError unless robustbench knows ``dataset`` and ``threat_model`` (None: not checked)."""
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    datasets, threats = [d.value for d in BenchmarkDataset], [t.value for t in ThreatModel]
    if (dataset is None or dataset in datasets) and (threat_model is None or threat_model in threats):
        return
    extra = " or all" if listing else ""
    raise LoadError(
        f"RobustBench has no dataset/threat model {one_line(str(dataset))}/{one_line(str(threat_model))}: "
        f"datasets {', '.join(datasets)}{extra}; threat models {', '.join(threats)}{extra}"
    )


def _zoo(dataset: str, threat_model: str) -> dict[str, Any]:
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    threat_model = canonical_threat(threat_model)
    _check_names(dataset, threat_model)
    return model_dicts.get(BenchmarkDataset(dataset), {}).get(ThreatModel(threat_model), {})


def zoo_names(dataset: str = "cifar10", threat_model: str = "Linf") -> list[str]:
    """Names of the models robustbench knows for a dataset and threat model."""
    return sorted(_zoo(dataset, threat_model))


def zoo_pairs(dataset: str = "cifar10", threat_model: str = "Linf") -> list[tuple[str, str]]:
    """The (dataset, threat model) sections of robustbench's ``model_dicts`` that
    ``dataset`` and ``threat_model`` select, in robustbench's order; either may be
    ``all``. A pair robustbench knows but has no models for is kept (it lists nothing)."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts

    threat_model = threat_model if threat_model == "all" else canonical_threat(threat_model)
    _check_names(None if dataset == "all" else dataset, None if threat_model == "all" else threat_model, listing=True)
    if dataset != "all" and threat_model != "all":
        return [(dataset, threat_model)]
    return [(ds.value, tm.value) for ds, section in model_dicts.items() for tm in section
            if dataset in ("all", ds.value) and threat_model in ("all", tm.value)]


def _entry(name: str, dataset: str, threat_model: str) -> dict[str, Any]:
    zoo = _zoo(dataset, threat_model)
    if name not in zoo:
        import difflib

        close = difflib.get_close_matches(name, list(zoo), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise LoadError(
            f"RobustBench has no model {one_line(repr(name))} for {dataset}/{threat_model}: {hint}"
            f"see `armetrics zoo --dataset {dataset} --threat-model {threat_model}`"
        )
    return zoo[name]


def timm_name(name: str, dataset: str, threat_model: str) -> str:
    """The timm model name robustbench tries first (``load_model``): lower case, ``-`` as
    ``_``, then ``_<dataset>_<threat>``."""
    return f"{name.lower().replace('-', '_')}_{dataset.lower()}_{threat_model.lower()}"


def _timm_entry(name: str, dataset: str, threat_model: str) -> bool:
    """Whether robustbench builds this entry through timm (its timm name is registered)."""
    import timm

    return timm.is_model(timm_name(name, dataset, threat_model))


def reads_weight_file(name: str, dataset: str, threat_model: str) -> bool:
    """Whether robustbench's ``load_model`` reads ``--model-dir``'s file for this entry;
    when not, it returns what its constructor downloaded (timm entries; ImageNet
    ``Standard_*``, torchvision's weights), and armetrics reads the file in its place."""
    return not (_timm_entry(name, dataset, threat_model) or (dataset == "imagenet" and "Standard" in name))


# --------------------------------------------------------------------------- files
def weight_paths(name: str, model_dir: str | Path, dataset: str, threat_model: str) -> list[Path]:
    """Where robustbench looks for this model's weights (``DIR/<dataset>/<threat>/<NAME>.pt``;
    ensembles use ``<NAME>.pt_m<i>.pt``)."""
    threat_model = canonical_threat(threat_model)
    base = Path(model_dir) / dataset / threat_model / f"{name}.pt"
    gdrive = _entry(name, dataset, threat_model).get("gdrive_id")
    if isinstance(gdrive, list):
        return [Path(f"{base}_m{i}.pt") for i in range(len(gdrive))]
    return [base]


def _timm_url(timm_model: str) -> str | None:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_model)
    if cfg is None:
        return None
    return cfg.url or (f"https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else None)


def weight_sources(name: str, dataset: str, threat_model: str) -> list[str | None]:
    """Where robustbench downloads each of :func:`weight_paths` from: a Google Drive URL
    (``gdrive_id``), the timm pretrained URL of timm entries, or the torchvision URL the
    constructor asks for (ImageNet ``Standard_R50``); None where robustbench records none."""
    threat_model = canonical_threat(threat_model)
    gdrive = _entry(name, dataset, threat_model).get("gdrive_id")
    if _timm_entry(name, dataset, threat_model):
        return [_timm_url(timm_name(name, dataset, threat_model))]
    if isinstance(gdrive, list):
        return [GDRIVE_URL.format(g) for g in gdrive]
    if gdrive:
        return [GDRIVE_URL.format(gdrive)]
    if not reads_weight_file(name, dataset, threat_model):
        try:
            built = build(name, dataset, threat_model)
        except LoadError:
            return [None]
        return [built.pretrained[0].url if built.pretrained else None]
    return [None]


def entry_files(name: str, model_dir: str | Path, dataset: str, threat_model: str) -> dict[str, Any]:
    """What the zoo listing shows of an entry's weights: ``weight_paths``,
    ``weight_sources`` (same order), ``weights_present`` (all files there),
    ``missing_weights`` (``{"path", "source"}`` of each absent file) and ``preprocessing``."""
    paths = weight_paths(name, model_dir, dataset, threat_model)
    sources = weight_sources(name, dataset, threat_model)
    present = [p.is_file() for p in paths]
    return {
        "weights_present": all(present),
        "weight_paths": [str(p) for p in paths],
        "weight_sources": sources,
        "missing_weights": [{"path": str(p), "source": s} for p, s, ok in zip(paths, sources, present) if not ok],
        "preprocessing": preprocessing(name, dataset, threat_model),
    }


def preprocessing(name: str, dataset: str, threat_model: str) -> str | None:
    """The preprocessing robustbench evaluates this entry with (``robustbench.data.
    get_preprocessing``), as a name: None for CIFAR; for timm entries derived from their
    timm config in the same grammar (``BicubicRes248Crop224``: bicubic resize of the
    shorter side to 248 px, centre crop 224); else the entry's ``preprocessing``."""
    threat_model = canonical_threat(threat_model)
    entry = _entry(name, dataset, threat_model)
    if dataset != "imagenet":
        return None
    if _timm_entry(name, dataset, threat_model):
        return _timm_preprocessing(timm_name(name, dataset, threat_model))
    value = entry.get("preprocessing")
    return value if isinstance(value, str) else None


def input_shape(name: str, dataset: str, threat_model: str) -> tuple[int, int, int]:
    """(C, H, W) of one input of this entry as RobustBench evaluates it: 32 px for CIFAR,
    the side its preprocessing crops (or resizes) to for ImageNet, else 224 px."""
    from .preprocess import resolve

    if dataset != "imagenet":
        return (3, 32, 32)
    pre = resolve(preprocessing(name, dataset, threat_model))
    side = (pre.crop or pre.resize) if pre is not None else None
    return (3, side or 224, side or 224)


def _timm_preprocessing(timm_model: str) -> str | None:
    """``get_timm_model_preprocessing`` as a name: resize to floor(size / crop_pct), crop size."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_model)
    if cfg is None or cfg.interpolation not in ("bilinear", "bicubic") or not cfg.crop_pct:
        return None
    size = cfg.input_size[1]
    scale = int(math.floor(size / cfg.crop_pct))
    return f"{'Bicubic' if cfg.interpolation == 'bicubic' else ''}Res{scale}Crop{size}"


# --------------------------------------------------------------------------- building
@dataclass
class Pretrained:
    """Weights a zoo constructor asked timm or torchvision for, captured instead of
    downloaded: the ``module`` they were for, the ``url`` they come from, and ``load``
    (``load(state_dict, shown_path)``: loads them the way that library would have)."""

    module: Any
    url: str | None
    load: Callable[[dict, str], None]


@dataclass
class Built:
    """A zoo entry's architecture (random weights) and the pretrained weights its
    constructor asked for, not loaded."""

    model: Any
    pretrained: list[Pretrained] = field(default_factory=list)


class _Deferred(dict):
    """What torchvision's ``WeightsEnum.get_state_dict`` returns while a constructor runs:
    no weights, the URL they would come from."""

    def __init__(self, url: str | None):
        super().__init__()
        self.url = url


def _deferred_state_dict(weights, *args, **kwargs) -> _Deferred:
    return _Deferred(getattr(weights, "url", None))


def _refuse_download(url: Any = None, *args, **kwargs):
    raise LoadError(f"robustbench asked to download {one_line(str(url))[:200]}: armetrics never downloads; "
                    f"place the weight file in --model-dir (see `armetrics zoo`)")


def _capture_torchvision(orig: Callable, captured: list[Pretrained]) -> Callable:
    """``nn.Module.load_state_dict`` that records a :class:`_Deferred` instead of loading it."""
    from torch.nn.modules.module import _IncompatibleKeys

    def load_state_dict(module, state_dict, *args, **kwargs):
        if isinstance(state_dict, _Deferred):
            captured.append(Pretrained(module, state_dict.url, partial(_strict_load, module)))
            return _IncompatibleKeys([], [])
        return orig(module, state_dict, *args, **kwargs)

    return load_state_dict


def _capture_timm(orig: Callable, captured: list[Pretrained]) -> Callable:
    """timm's ``load_pretrained`` that records its arguments instead of downloading."""
    def load_pretrained(model, pretrained_cfg=None, num_classes=1000, in_chans=3, filter_fn=None, strict=True):
        cfg = dict(pretrained_cfg or getattr(model, "pretrained_cfg", None) or {})
        url = cfg.get("url") or (f"https://huggingface.co/{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else None)
        load = partial(_timm_load, orig, model, cfg, dict(num_classes=num_classes, in_chans=in_chans,
                                                           filter_fn=filter_fn, strict=strict))
        captured.append(Pretrained(model, url, load))

    return load_pretrained


@contextlib.contextmanager
def _offline(captured: list[Pretrained] | None = None):
    """While robustbench code runs: timm's and torchvision's pretrained-weight requests
    are appended to ``captured`` (when given) instead of downloaded, and every download
    function raises LoadError."""
    import timm.models._builder as timm_builder
    import torch
    import torch.hub
    import torchvision.models._api as tv_api

    patches = [(torch.hub, "load_state_dict_from_url"), (torch.hub, "download_url_to_file"),
               (timm_builder, "load_state_dict_from_url"), (tv_api, "load_state_dict_from_url")]
    patches = [(owner, attr, _refuse_download) for owner, attr in patches]
    if captured is not None:
        patches += [(timm_builder, "load_pretrained", _capture_timm(timm_builder.load_pretrained, captured)),
                    (tv_api.WeightsEnum, "get_state_dict", _deferred_state_dict),
                    (torch.nn.Module, "load_state_dict", _capture_torchvision(torch.nn.Module.load_state_dict,
                                                                              captured))]
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in patches]
    try:
        for owner, attr, value in patches:
            setattr(owner, attr, value)
        yield
    finally:
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)


def build(name: str, dataset: str = "cifar10", threat_model: str = "Linf") -> Built:
    """A zoo entry's architecture with random weights, built as robustbench's
    ``load_model`` builds it (timm entries through ``timm.create_model(pretrained=True)``)
    with every download captured or refused. LoadError when robustbench cannot build it
    here (naming why and the package versions)."""
    threat_model = canonical_threat(threat_model)
    entry = _entry(name, dataset, threat_model)
    captured: list[Pretrained] = []
    try:
        with _quiet(), _offline(captured):
            if _timm_entry(name, dataset, threat_model):
                import timm

                model = timm.create_model(timm_name(name, dataset, threat_model),
                                          num_classes=NUM_CLASSES.get(dataset, 1000), pretrained=True)
            else:
                model = entry["model"]()
    except LoadError:
        raise
    except Exception as exc:  # robustbench's code: whatever it raises, it cannot build the entry here
        raise _cannot_build(name, dataset, threat_model, exc) from None
    return Built(model, captured)


def _cannot_build(name: str, dataset: str, threat_model: str, exc: Exception) -> LoadError:
    import torch

    text = one_line(first_line(exc))
    if not torch.cuda.is_available() and any(s in text for s in ("NVIDIA", "CUDA", "cuda")):
        why = "its constructor puts tensors on a CUDA GPU and this machine has none"
        fix = "run it on a machine with a CUDA GPU"
    else:
        why = f"its constructor raised {type(exc).__name__}: {text}"
        fix = "use the robustbench and timm versions this entry was published with"
    return LoadError(f"robustbench cannot build {dataset}/{threat_model}/{name} here ({versions()}): {why}: {fix}")


def architecture(name: str, dataset: str = "cifar10", threat_model: str = "Linf"):
    """A fresh (randomly initialised) instance of a zoo model's architecture."""
    return build(name, dataset, threat_model).model


# --------------------------------------------------------------------------- loading
def _show(path: Any) -> str:
    return one_line(str(path))


def _strict_load(module, state: dict, shown: str) -> None:
    from .loading import load_state_into

    load_state_into(module, state, source=shown, fix="download the file again")


def _timm_load(orig: Callable, model, cfg: dict, kwargs: dict, state: dict, shown: str) -> None:
    """timm's own ``load_pretrained`` (its key filter, classifier handling, strictness)
    fed with ``state`` instead of a download."""
    from .loading import check_fits

    local = dict(cfg, state_dict=state, source="", file=None, url=None, hf_hub_id=None)
    try:
        with _offline():
            orig(model, pretrained_cfg=local, **kwargs)
    except RuntimeError as exc:
        check_fits(model, state, source=shown, fix="download the file again")
        raise LoadError(f"{shown} does not fit this timm model ({one_line(first_line(exc))}): "
                        f"download the file again") from None


def state_of(obj: Any, shown: str) -> dict:
    """The state_dict in what a zoo weight file holds: unwrapped from
    :data:`CHECKPOINT_KEYS` (nested too); a pickled module (trusted files) gives its own."""
    from .loading import extract_state_dict

    if not isinstance(obj, dict) and callable(getattr(obj, "state_dict", None)):
        obj = obj.state_dict()
    state = extract_state_dict(obj, CHECKPOINT_KEYS)
    if state is None:
        raise LoadError(f"{shown} holds no state_dict (a dict of tensors, also under "
                        f"{', '.join(CHECKPOINT_KEYS)}): download the file again")
    return dict(state)


def _swin_inside(module):
    """The timm Swin transformer a ``normalize_model`` wrapper holds, else None."""
    try:
        from timm.models.swin_transformer import SwinTransformer
    except ImportError:
        return None
    inner = getattr(module, "model", None)
    return inner if isinstance(inner, SwinTransformer) else None


def _fit(module, state: dict, name: str, dataset: str, shown: str) -> None:
    """Load ``state`` into ``module`` as robustbench does: prefixes aligned, Swin keys of
    older timm renamed (ImageNet), then its ``_safe_load_state_dict``."""
    rb = import_robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset

    from .loading import align_keys, check_fits

    state = align_keys(state, module.state_dict().keys())
    swin = _swin_inside(module) if dataset == "imagenet" else None
    if swin is not None:
        # The Swin part sits under ``model.`` beside the wrapper's ``normalize.*`` buffers
        # (a file saved from the wrapper) or is all of the file (as distributed: robustbench
        # filters it, then adds ``model.``); timm's filter sees only the Swin keys.
        from timm.models.swin_transformer import checkpoint_filter_fn

        inner = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        rest = {k: v for k, v in state.items() if not k.startswith("model.")}
        state = {**rest, **{"model." + k: v for k, v in checkpoint_filter_fn(inner, swin).items()}}
    try:
        rb.utils._safe_load_state_dict(module, name, state, BenchmarkDataset(dataset))
    except RuntimeError:
        check_fits(module, state, source=shown, fix=f"it is not the checkpoint of {name}; download it again")
        raise


def _ensemble_parts(name: str, model, i: int) -> list[tuple[Any, str | None]]:
    """Where robustbench puts file ``i`` of an ensemble: (module, key of the file's dict
    or None for all of it)."""
    if name.startswith("Bai2023Improving"):
        comp = model.comp_model
        return [(comp.models[i], None)] if i < 2 else [(comp.policy_net, "model"), (comp.bn, "bn")]
    if name.startswith("Bai2024MixedNUTS"):
        if i > 1:
            raise LoadError(f"{name} has two weight files, not {i + 1}")
        return [(model.std_model if i == 0 else model.rob_model, None)]
    return [(model.models[i], None)]


def _part(obj: Any, key: str | None, shown: str) -> Any:
    if key is None:
        return obj
    inner = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(inner, dict) or key not in inner:
        raise LoadError(f"{shown} has no {key!r} part (robustbench reads this file as a dict with it): "
                        f"download the file again")
    return inner[key]


def _load_ensemble(name: str, dataset: str, model, paths: list[Path], read: Callable) -> None:
    for i, path in enumerate(paths):
        obj = read(path)
        for module, key in _ensemble_parts(name, model, i):
            _fit(module, state_of(_part(obj, key, _show(path)), _show(path)), name, dataset, _show(path))
            module.eval()


def _load_pretrained(name: str, built: Built, paths: list[Path], read: Callable) -> None:
    """The weight files in place of the downloads the constructor asked for."""
    from .loading import align_keys

    if len(built.pretrained) != len(paths):
        raise LoadError(f"robustbench's constructor of {name} asked for {len(built.pretrained)} pretrained "
                        f"weight sets, not {len(paths)} ({versions()}): armetrics cannot place the file")
    for slot, path in zip(built.pretrained, paths):
        state = state_of(read(path), _show(path))
        expected = slot.module.state_dict().keys()
        # a state_dict of the whole zoo model (its normalize_model wrapper): the wrapper's
        # constants are already in place; the network's weights are what the slot takes
        state = {k: v for k, v in state.items() if k not in WRAPPER_BUFFERS or k in expected}
        slot.load(align_keys(state, expected), _show(path))


def _present(name: str, model_dir: str | Path, dataset: str, threat_model: str) -> list[Path]:
    """The weight files, all present and regular (a FIFO or a device would block or
    stream forever: refused unopened), else LoadError naming the path and its source."""
    paths = weight_paths(name, model_dir, dataset, threat_model)
    missing = [p for p in paths if not p.exists() and not p.is_symlink()]
    for p in paths:
        if p not in missing:
            regular_file(p, "RobustBench weight file", LoadError)
    if missing:
        source = weight_sources(name, dataset, threat_model)[paths.index(missing[0])]
        where = f" (robustbench downloads it from {source})" if source else ""
        raise LoadError(
            f"weights of RobustBench model {name!r} are not in --model-dir and this machine "
            f"cannot download them: place the file at {_show(missing[0])}{where}"
        )
    return paths


def load(name: str, model_dir: str | Path, dataset: str, threat_model: str, read: Callable[[Path], Any]):
    """Load a zoo model from ``model_dir`` as robustbench's ``load_model`` would from the
    same files, never downloading. ``read(path)`` returns a file's content (the caller's
    safe ``torch.load``). Missing files raise a LoadError naming where to place them."""
    threat_model = canonical_threat(threat_model)
    return load_from(name, dataset, threat_model, _present(name, model_dir, dataset, threat_model), read)


def load_from(name: str, dataset: str, threat_model: str, paths: list[Path], read: Callable[[Path], Any]):
    """The entry built and given the weights of ``paths`` (its files in robustbench's
    order), placed as robustbench places them; for ``robustbench:NAME`` and for
    ``--arch robustbench:NAME FILE`` alike."""
    from . import noinit

    ledger = noinit.Ledger()
    try:
        with noinit.skipping_init(ledger):  # the files overwrite the random initial weights: not drawn
            built = build(name, dataset, threat_model)
    except LoadError:  # a constructor that checks its initial values (geotorch's Stiefel in Kang2021Stable)
        built = None
    if built is not None:
        with noinit.recording_writes(ledger):
            _place(name, dataset, threat_model, built, paths, read)
    if built is None or not ledger.complete(built.model):  # build as robustbench does; its errors are the real ones
        del built
        built = build(name, dataset, threat_model)
        _place(name, dataset, threat_model, built, paths, read)
    return built.model.eval()


def _place(name: str, dataset: str, threat_model: str, built: Built, paths: list[Path], read: Callable) -> None:
    """The weights of ``paths`` put into the built entry, where robustbench puts them."""
    with _quiet(), _offline():
        if not reads_weight_file(name, dataset, threat_model):
            _load_pretrained(name, built, paths, read)
        elif len(paths) > 1:
            _load_ensemble(name, dataset, built.model, paths, read)
        else:
            _fit(built.model, state_of(read(paths[0]), _show(paths[0])), name, dataset, _show(paths[0]))
