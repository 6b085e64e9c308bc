"""Any checkpoint or zoo name -> ``nn.Module`` in eval mode. Safe by default.

Formats are recognised by their bytes, not their file names:

============================  ==========================================================
state_dict / checkpoint dict  ``torch.load(weights_only=True)``; unwraps ``state_dict``,
                              ``model``, ``model_state_dict``, ``net``; aligns
                              ``module.``/``model.``/``_orig_mod.`` prefixes; needs ``arch``
``.safetensors``              ``safetensors.torch.load_file`` (no code at all); needs ``arch``
TorchScript archive           ``torch.jit.load`` (TorchScript, no Python pickle)
``torch.export`` ``.pt2``     ``torch.export.load`` with every internal ``torch.load``
                              forced to ``weights_only=True`` and raw pickles refused
full pickled ``nn.Module``    only with ``trust_pickle=True`` (it can run any code)
``robustbench:NAME``          robustbench's own loader from ``model_dir``; never downloads
============================  ==========================================================
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import pickle
import re
import struct
import sys
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from . import _robustbench
from .errors import LoadError, UnsafePickleError

CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net")
PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass
class ModelInfo:
    """Where a model came from; recorded in every report's ``model`` section."""

    source: str
    name: str
    format: str
    sha256: str | None = None
    arch: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- sniffing
def sniff(path: Path) -> str:
    """The format of a file from its first bytes: ``empty``, ``html``, ``torch-zip``,
    ``torchscript``, ``export``, ``safetensors``, ``pickle`` or ``unknown``. Raises
    LoadError for a damaged zip."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(1024)
    if size == 0:
        return "empty"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in text[:512]:
        return "html"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise LoadError(f"{path} is truncated or corrupt ({exc}): download or save it again") from None
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("archive_format") or n.endswith(".json") and "/models/" in n for n in names):
            return "export"
        if any(n.endswith("data.pkl") for n in names):
            return "torch-zip"
        return "zip"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


# --------------------------------------------------------------------------- safety
@contextlib.contextmanager
def _forced_weights_only():
    """Within the block, every ``torch.load`` is ``weights_only=True`` and the raw pickle
    loaders torch.export uses for custom objects refuse to run."""
    from torch.export.pt2_archive import _package

    orig_load, orig_pickle = torch.load, _package.pickle

    def safe_load(*args, **kwargs):
        kwargs["weights_only"] = True
        return orig_load(*args, **kwargs)

    class _NoPickle:
        @staticmethod
        def loads(*_a, **_k):
            raise pickle.UnpicklingError("raw pickled objects are refused (needs trust_pickle)")

    torch.load = safe_load
    _package.pickle = _NoPickle
    try:
        yield
    finally:
        torch.load = orig_load
        _package.pickle = orig_pickle


def _unsafe_error(path: Path, exc: Exception) -> UnsafePickleError:
    m = re.search(r"(?:Unsupported global|GLOBAL) ?:? ?(?:GLOBAL )?([\w.]+)", str(exc))
    what = f" ({m.group(1)})" if m else ""
    return UnsafePickleError(
        f"{path} contains pickled Python objects{what} that can run arbitrary code when loaded: "
        f"if you trust its source pass --trust-pickle (trust_pickle=True), "
        f"or save a state_dict or .safetensors instead"
    )


def _torch_load(path: Path, trust_pickle: bool, device: str) -> Any:
    try:
        return torch.load(path, map_location=device, weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc) or "Unsupported" in str(exc):
            raise _unsafe_error(path, exc) from None
        raise LoadError(f"{path} is not a readable torch checkpoint ({_first_line(exc)}): download or save it again") from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError, MemoryError, OverflowError, UnicodeDecodeError, struct.error) as exc:
        raise LoadError(
            f"{path} is truncated or corrupt ({_first_line(exc)}): download or save it again"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


# --------------------------------------------------------------------------- arch
def build_arch(spec: str, arch_kwargs: dict | None = None, *, dataset: str = "cifar10", threat_model: str = "Linf") -> nn.Module:
    """Build an architecture from ``pkg.mod:callable``, ``path/file.py:callable`` or
    ``robustbench:NAME`` (random weights). ``arch_kwargs`` are passed to the callable."""
    arch_kwargs = dict(arch_kwargs or {})
    if spec.startswith("robustbench:"):
        ds, tm, name = _robustbench.parse_name(spec, dataset, threat_model)
        return _robustbench.architecture(name, ds, tm)
    if ":" not in spec:
        raise LoadError(f"malformed --arch {spec!r}: write package.module:callable, path/to/file.py:callable or robustbench:NAME")
    target, attr = spec.rsplit(":", 1)
    if target.endswith(".py"):
        file = Path(target)
        if not file.is_file():
            raise LoadError(f"--arch file {file} does not exist: check the path")
        mod_name = f"_armetrics_arch_{hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:10]}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec_ = importlib.util.spec_from_file_location(mod_name, file)
            module = importlib.util.module_from_spec(spec_)
            sys.modules[mod_name] = module
            try:
                spec_.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[mod_name]
                raise LoadError(f"--arch file {file} failed to import: {_first_line(exc)}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise LoadError(f"cannot import --arch module {target!r} ({exc}): check the name or install it") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise LoadError(f"--arch {spec!r}: {target} has no callable {attr!r}")
    try:
        model = fn(**arch_kwargs)
    except TypeError as exc:
        raise LoadError(f"--arch {spec!r} rejected --arch-kwargs {json.dumps(arch_kwargs)}: {_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise LoadError(f"--arch {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """The tensors of a state_dict or of a checkpoint dict wrapping one, else None."""
    if not isinstance(obj, dict):
        return None
    for _ in range(3):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        inner = next((obj[k] for k in CHECKPOINT_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if obj and all(isinstance(v, torch.Tensor) or v is None for v in obj.values()):
        return {k: v for k, v in obj.items() if v is not None}
    return None


def align_keys(state: dict[str, torch.Tensor], expected: Sequence[str]) -> dict[str, torch.Tensor]:
    """Strip or add the ``module.``/``_orig_mod.``/``model.`` prefixes so that the keys of
    ``state`` best match ``expected`` (the architecture's state_dict keys)."""
    expected = set(expected)
    best, best_hits = state, len(expected & set(state))
    frontier = [state]
    for _ in range(3):
        nxt = []
        for cand in frontier:
            for p in PREFIXES:
                if all(k.startswith(p) for k in cand):
                    nxt.append({k[len(p):]: v for k, v in cand.items()})
            nxt.append({"model." + k: v for k, v in cand.items()})
        for cand in nxt:
            hits = len(expected & set(cand))
            if hits > best_hits:
                best, best_hits = cand, hits
        frontier = [c for c in nxt if len(c) and not all(k.startswith("model.model.model.") for k in c)]
    return best


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> nn.Module:
    """``load_state_dict(strict=True)`` with an error listing missing, unexpected and
    mis-shaped keys."""
    expected = model.state_dict()
    state = align_keys(state, expected.keys())
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        def show(items):
            return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches (file vs arch): {show(shapes)}")
        raise LoadError(
            f"{source} does not fit the architecture — {'; '.join(parts)}: "
            f"check --arch and --arch-kwargs"
        )
    model.load_state_dict(state, strict=True)
    return model


# --------------------------------------------------------------------------- normalization
class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for models that expect normalized input."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class _NormalizedScript(nn.Module):
    def __init__(self, normalize: Normalize, model: nn.Module):
        super().__init__()
        self.normalize, self.model = normalize, model

    def forward(self, x):
        return self.model(self.normalize(x))


def add_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """Make ``model`` take inputs in [0, 1] when it expects ``(x - mean)/std``.

    Regular modules get a forward pre-hook, so layer names stay as they were;
    TorchScript modules (which take no hooks) are wrapped, their layers then named
    ``model.<name>``."""
    if len(mean) != len(std) or not len(mean):
        raise LoadError("--mean and --std need the same number of values (one per channel)")
    if any(s == 0 for s in std):
        raise LoadError("--std values must be non-zero")
    norm = Normalize(mean, std)
    if isinstance(model, torch.jit.ScriptModule):
        return _NormalizedScript(norm, model)

    def pre_hook(_module, args):  # norm is not registered as a submodule: names unchanged
        return (norm.to(args[0].device)(args[0]),) + tuple(args[1:])

    model.register_forward_pre_hook(pre_hook)
    return model


# --------------------------------------------------------------------------- main entry
def load_model(
    source: str | Path,
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    *,
    trust_pickle: bool = False,
    model_dir: str | Path = "models",
    dataset: str = "cifar10",
    threat_model: str = "Linf",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: str = "cpu",
) -> nn.Module:
    """Load a model for analysis: eval mode, parameters frozen, on ``device``.

    ``source`` is a checkpoint file or ``robustbench:NAME`` /
    ``robustbench:DATASET/THREAT/NAME``. ``arch`` is needed for weight-only files
    (state_dicts, checkpoint dicts, safetensors). The result carries
    ``model.armetrics_info`` (a :class:`ModelInfo`) for the report.
    """
    source = str(source)
    if source.startswith("robustbench:"):
        model, info = _load_robustbench(source, model_dir, dataset, threat_model, trust_pickle)
    else:
        model, info = _load_file(Path(source), arch, arch_kwargs, trust_pickle, device, dataset, threat_model)
    if (mean is None) != (std is None):
        raise LoadError("give both --mean and --std (or neither)")
    if mean is not None:
        model = add_normalization(model, mean, std)
        info.notes.append(f"inputs normalized with mean={list(mean)} std={list(std)}")
    model = eval_mode(model.to(device))
    for p in model.parameters():
        p.requires_grad_(False)
    model.armetrics_info = info
    return model


def eval_mode(model: nn.Module) -> nn.Module:
    """``model.eval()``, except for torch.export modules, which are fixed in the mode they
    were exported in and refuse ``eval()``."""
    try:
        return model.eval()
    except NotImplementedError:
        return model


def _check_file(path: Path) -> str:
    if not path.exists():
        raise LoadError(f"{path} does not exist: check the path")
    if path.is_dir():
        raise LoadError(f"{path} is a directory, not a checkpoint file: name the file")
    kind = sniff(path)
    if kind == "empty":
        raise LoadError(f"{path} is empty (0 bytes): download or save it again")
    if kind == "html":
        raise LoadError(
            f"{path} is an HTML page, not a checkpoint (a failed download, e.g. a Google Drive "
            f"warning page?): download the file itself again"
        )
    if kind == "zip":
        raise LoadError(f"{path} is a zip archive but not a torch archive: pass the checkpoint file itself")
    if kind == "unknown":
        raise LoadError(
            f"{path} is not a recognised checkpoint (state_dict, TorchScript, .pt2, .safetensors): "
            f"check the file"
        )
    return kind


def _load_file(path, arch, arch_kwargs, trust_pickle, device, dataset, threat_model):
    kind = _check_file(path)
    info = ModelInfo(source=str(path), name=path.stem, format=kind, sha256=sha256_file(path), arch=arch)
    if kind == "torchscript":
        try:
            return torch.jit.load(str(path), map_location=device), info
        except Exception as exc:
            raise LoadError(f"{path} is a damaged TorchScript archive ({_first_line(exc)}): save it again") from None
    if kind == "export":
        try:
            if trust_pickle:
                program = torch.export.load(str(path))
            else:
                with _forced_weights_only():
                    program = torch.export.load(str(path))
        except pickle.UnpicklingError as exc:
            raise _unsafe_error(path, exc) from None
        except Exception as exc:
            raise LoadError(f"{path} is a damaged torch.export archive ({_first_line(exc)}): export it again") from None
        return program.module(), info
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device=device)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise LoadError(f"{path} is a damaged .safetensors file ({_first_line(exc)}): save it again") from None
        obj: Any = state
    else:  # torch-zip or legacy pickle
        obj = _torch_load(path, trust_pickle, device)

    if isinstance(obj, nn.Module):
        info.format = "pickled-module"
        return obj, info
    if isinstance(obj, dict):
        module = next((obj[k] for k in CHECKPOINT_KEYS if isinstance(obj.get(k), nn.Module)), None)
        if module is not None:
            info.format = "pickled-module"
            return module, info
    state = extract_state_dict(obj)
    if state is None:
        raise LoadError(
            f"{path} holds a {type(obj).__name__} that is neither a model nor a state_dict "
            f"(looked for keys {', '.join(CHECKPOINT_KEYS)}): save model.state_dict()"
        )
    info.format = "safetensors" if kind == "safetensors" else "state_dict"
    if arch is None:
        raise LoadError(
            f"{path} is a state_dict ({len(state)} tensors) without an architecture: "
            f"pass --arch SPEC (package.module:callable, file.py:callable or robustbench:NAME)"
        )
    model = build_arch(arch, arch_kwargs, dataset=dataset, threat_model=threat_model)
    return load_state_into(model, state, source=str(path)), info


def _load_robustbench(source, model_dir, dataset, threat_model, trust_pickle):
    ds, tm, name = _robustbench.parse_name(source, dataset, threat_model)
    paths = _robustbench.weight_paths(name, model_dir, ds, tm)
    for p in paths:
        if p.exists():
            _check_file(p)
    sha = sha256_file(paths[0]) if paths[0].is_file() else None
    info = ModelInfo(source=f"robustbench:{ds}/{tm}/{name}", name=name, format="robustbench",
                     sha256=sha, arch=f"robustbench:{ds}/{tm}/{name}")
    guard = contextlib.nullcontext() if trust_pickle else _forced_weights_only()
    try:
        with guard:
            model = _robustbench.load(name, model_dir, ds, tm)
    except pickle.UnpicklingError as exc:
        raise _unsafe_error(paths[0], exc) from None
    except (RuntimeError, EOFError) as exc:
        raise LoadError(f"{paths[0]} could not be loaded by robustbench ({_first_line(exc)}): download it again") from None
    return model, info
