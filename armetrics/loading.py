"""Any checkpoint or zoo name -> ``nn.Module`` in eval mode. Safe by default.

Formats are recognised by their bytes, not their file names:

============================  ==========================================================
state_dict / checkpoint dict  ``torch.load(weights_only=True)``; unwraps ``state_dict``,
                              ``model``, ``model_state_dict``, ``net``; aligns
                              ``module.``/``model.``/``_orig_mod.`` prefixes; needs ``arch``
``.safetensors``              ``safetensors.torch.load_file`` (no code at all); needs ``arch``
TorchScript archive           code: refused unless ``trust_code=True``, then ``torch.jit.load``
``torch.export`` ``.pt2``     ``torch.export.load`` after the archive's program was checked
                              (operators, symbolic expressions, guards, names: see
                              :mod:`armetrics.export_check`), with every internal
                              ``torch.load`` forced to ``weights_only=True`` and raw
                              pickles refused; the loaded graph is walked again
full pickled ``nn.Module``    only with ``trust_pickle=True`` / ``trust_code=True``
``robustbench:NAME``          built by robustbench, weights read here from ``model_dir`` as
                              robustbench's ``load_model`` reads them; never downloads
============================  ==========================================================

Every file is hostile until checked: it must be a regular file (never a FIFO or a
device), and a zip archive's declared member sizes are checked before torch reads it
(zip bombs, see :mod:`armetrics.zipcheck`). ``trust_pickle`` and ``trust_code`` are one
switch: either trusts pickles and code. Warnings that torch and robustbench print while
loading are silenced unless ``ARMETRICS_DEBUG`` is set.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import io
import json
import logging
import os
import pickle
import re
import struct
import sys
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from . import _robustbench, checks
from .errors import ArmetricsError, LoadError, UnsafeCodeError, UnsafePickleError, first_line, one_line
from .export_check import TRUST_FIX, check_export_archive, check_exported_program
from .safeio import read_error, regular_file, sha256_file, sha256_files
from .zipcheck import _mib, check_zip_members

CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net")
PREFIXES = ("module.", "_orig_mod.", "model.")

#: Largest ``--arch`` Python file read.
ARCH_FILE_LIMIT = 16 * 2**20


@dataclass
class ModelInfo:
    """Where a model came from; recorded in every report's ``model`` section."""

    source: str
    name: str
    format: str
    sha256: str | None = None
    arch: str | None = None
    notes: list[str] = field(default_factory=list)
    #: RobustBench zoo entries (``robustbench:NAME``, ``--arch robustbench:NAME``): the
    #: entry's dataset and threat model, and the preprocessing RobustBench evaluates it
    #: with (an :mod:`armetrics.preprocess` name such as ``Res256Crop224``; None for CIFAR).
    dataset: str | None = None
    threat_model: str | None = None
    preprocessing: str | None = None
    #: ``(C, H, W)`` of one input the model expects, when the source says so (a zoo
    #: entry: 32 px for CIFAR, its preprocessing's crop for ImageNet; an architecture
    #: found from the weights: its default input). Weight probes trace the model on it
    #: when no data is given.
    input_shape: tuple[int, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report's ``model`` section; the optional fields only where they are set."""
        out = asdict(self)
        for key in ("dataset", "threat_model", "preprocessing", "input_shape"):
            if out[key] is None:
                del out[key]
        if "input_shape" in out:
            out["input_shape"] = list(out["input_shape"])
        return out


def _show(path: Any) -> str:
    """A path as it may appear in a one-line message."""
    return one_line(str(path))


def _regular(path: str | Path, what: str = "checkpoint") -> os.stat_result:
    """``os.stat`` of a regular file, else a one-line LoadError; never opens the path."""
    return regular_file(path, what, LoadError)


def model_files(source: str, model_dir: str | Path = "models", dataset: str = "cifar10",
                threat_model: str = "Linf") -> list[Path]:
    """The files loading ``source`` reads: the checkpoint itself, or a zoo entry's weight
    files in ``model_dir`` (``robustbench:NAME``; LoadError for a malformed name)."""
    if source.startswith("robustbench:"):
        ds, tm, name = _robustbench.parse_name(source, dataset, threat_model)
        return _robustbench.weight_paths(name, model_dir, ds, tm)
    return [Path(source)]


@contextlib.contextmanager
def _quiet():
    """Silence the warnings and log records torch and robustbench emit while loading
    (deprecations, pickle protocol notes, torch.export's logged tracebacks), unless the
    environment sets ``ARMETRICS_DEBUG`` (the CLI does for ``--debug``)."""
    if os.environ.get("ARMETRICS_DEBUG"):
        yield
        return
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch._export", "torch.jit")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.CRITICAL + 1)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


# --------------------------------------------------------------------------- sniffing
def sniff(path: str | Path) -> str:
    """The format of a file from its first bytes: ``empty``, ``html``, ``torch-zip``,
    ``torchscript``, ``export``, ``zip``, ``safetensors``, ``pickle`` or ``unknown``.
    Raises LoadError for a special file, an unreadable file or a damaged zip."""
    return _sniff(Path(path))[0]


def _sniff(path: Path, size: int | None = None) -> tuple[str, list[zipfile.ZipInfo]]:
    if size is None:
        size = _regular(path).st_size
    if size == 0:  # also /proc files, which claim no size: never read
        return "empty", []
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError as exc:
        raise read_error(_show(path), exc, "checkpoint", LoadError) from None
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in text[:512]:
        return "html", []
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
        except PermissionError as exc:
            raise read_error(_show(path), exc, "checkpoint", LoadError) from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, struct.error,
                NotImplementedError, OverflowError, UnicodeDecodeError) as exc:
            raise LoadError(f"{_show(path)} is truncated or corrupt ({one_line(first_line(exc))}): "
                            f"download or save it again") from None
        names = [i.filename for i in infos]
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "torchscript", infos
        if any(n.endswith("archive_format") or n.endswith(".json") and "/models/" in n for n in names):
            return "export", infos
        if any(n.endswith("data.pkl") for n in names):
            return "torch-zip", infos
        return "zip", infos
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= size - 8 and head[8:9] == b"{":
            return "safetensors", []
    if head[:1] == b"\x80":
        return "pickle", []
    return "unknown", []


# --------------------------------------------------------------------------- zip bombs
def _check_torch_load_source(f: Any, where: str) -> None:
    """The zip checks for what ``torch.load`` is about to read (a path or a buffer)."""
    if isinstance(f, (str, os.PathLike)):
        st = _regular(f)
        try:
            with open(f, "rb") as fh:
                if fh.read(2) != b"PK":
                    return
                with zipfile.ZipFile(fh) as z:
                    infos = z.infolist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error, NotImplementedError):
            return  # torch reports the damage
        check_zip_members(_show(f), infos, st.st_size)
        return
    if isinstance(f, (bytes, bytearray, memoryview)):
        f = io.BytesIO(f)
    if not (hasattr(f, "read") and hasattr(f, "seek") and hasattr(f, "tell")):
        return
    try:
        pos = f.tell()
        head = f.read(2)
        f.seek(0, 2)
        size = f.tell() - pos
        f.seek(pos)
        if head != b"PK":
            return
        with zipfile.ZipFile(f) as z:
            infos = z.infolist()
        f.seek(pos)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error, NotImplementedError):
        with contextlib.suppress(Exception):
            f.seek(pos)
        return
    check_zip_members(f"{where} (an archive inside it)", infos, size)


# --------------------------------------------------------------------------- pickles
@contextlib.contextmanager
def _guarded_loads(trusted: bool, where: str):
    """Within the block every ``torch.load`` first checks the zip sizes of what it reads;
    unless ``trusted`` it is also ``weights_only=True``, and the raw pickle loaders
    torch.export uses for custom objects refuse to run."""
    from torch.export.pt2_archive import _package

    orig_load, orig_pickle, orig_obj = torch.load, _package.pickle, torch._C._pickle_load_obj

    def guarded_load(f, *args, **kwargs):
        _check_torch_load_source(f, where)
        if not trusted:
            kwargs["weights_only"] = True
        return orig_load(f, *args, **kwargs)

    class _NoPickle:
        @staticmethod
        def loads(*_a, **_k):
            raise pickle.UnpicklingError("raw pickled objects are refused (needs trust_pickle)")

    def no_script_object(*_a, **_k):
        raise pickle.UnpicklingError("pickled TorchScript objects are refused (needs trust_code)")

    torch.load = guarded_load
    if not trusted:
        _package.pickle = _NoPickle
        torch._C._pickle_load_obj = no_script_object
    try:
        yield
    finally:
        torch.load = orig_load
        _package.pickle = orig_pickle
        torch._C._pickle_load_obj = orig_obj


def _unsafe_error(path: Any, exc: Exception) -> UnsafePickleError:
    m = re.search(r"(?:Unsupported global|GLOBAL) ?:? ?(?:GLOBAL )?([\w.]+)", str(exc))
    what = f" ({m.group(1)})" if m else ""
    return UnsafePickleError(
        f"{_show(path)} contains pickled Python objects{what} that can run arbitrary code when loaded: "
        f"if you trust its source pass --trust-code (trust_code=True; alias --trust-pickle), "
        f"or save a state_dict or .safetensors instead"
    )


def _torch_load(path: Path, trusted: bool, device: torch.device) -> Any:
    try:
        with _quiet(), _guarded_loads(trusted, _show(path)):
            return torch.load(path, map_location=device, weights_only=not trusted)
    except ArmetricsError:
        raise
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc) or "Unsupported" in str(exc):
            raise _unsafe_error(path, exc) from None
        raise LoadError(f"{_show(path)} is not a readable torch checkpoint ({one_line(first_line(exc))}): "
                        f"download or save it again") from None
    except PermissionError as exc:
        raise read_error(_show(path), exc, "checkpoint", LoadError) from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError,
            MemoryError, OverflowError, UnicodeDecodeError, struct.error) as exc:
        raise LoadError(
            f"{_show(path)} is truncated or corrupt ({one_line(first_line(exc))}): download or save it again"
        ) from None


# --------------------------------------------------------------------------- torch.export programs
def _load_export(path: Path, trusted: bool, info: ModelInfo):
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise read_error(_show(path), exc, "checkpoint", LoadError) from None
    with f:
        if not trusted:
            check_export_archive(path, f)
        try:
            with _quiet(), _guarded_loads(trusted, _show(path)):
                program = torch.export.load(f)
        except ArmetricsError:
            raise
        except pickle.UnpicklingError as exc:
            raise _unsafe_error(path, exc) from None
        except Exception as exc:
            raise LoadError(f"{_show(path)} is a damaged torch.export archive ({one_line(first_line(exc))}): "
                            f"export it again") from None
    if not trusted:
        check_exported_program(path, program)
    try:
        with _quiet():
            return program.module(), info
    except Exception as exc:
        raise LoadError(f"{_show(path)} is a damaged torch.export archive ({one_line(first_line(exc))}): "
                        f"export it again") from None


# --------------------------------------------------------------------------- arch
def _exit_text(exc: SystemExit) -> str:
    return one_line(f"sys.exit({exc.code!r})" if exc.code is not None else "sys.exit()")


def _import_arch_file(file: Path) -> Any:
    """Import an ``--arch`` file (regular files only; SystemExit and errors become LoadError)."""
    _regular(file, "--arch file")
    shown = _show(file)
    mod_name = f"_armetrics_arch_{hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:10]}"
    module = sys.modules.get(mod_name)
    if module is not None:
        return module
    try:
        with open(file, "rb") as fh:
            source = fh.read(ARCH_FILE_LIMIT + 1)
    except OSError as exc:
        raise read_error(shown, exc, "--arch file", LoadError) from None
    if len(source) > ARCH_FILE_LIMIT:
        raise LoadError(f"--arch file {shown} is larger than {_mib(ARCH_FILE_LIMIT)}: "
                        f"pass the Python file that defines the architecture")
    spec_ = importlib.util.spec_from_file_location(mod_name, file)
    module = importlib.util.module_from_spec(spec_)
    sys.modules[mod_name] = module
    try:
        exec(compile(source, str(file), "exec"), module.__dict__)
    except SystemExit as exc:
        del sys.modules[mod_name]
        raise LoadError(f"--arch file {shown} called {_exit_text(exc)} while being imported: "
                        f"an architecture file must only define the model") from None
    except Exception as exc:
        del sys.modules[mod_name]
        raise LoadError(f"--arch file {shown} failed to import ({type(exc).__name__}: {one_line(first_line(exc))}): "
                        f"fix the file") from None
    return module


def build_arch(spec: str, arch_kwargs: dict | None = None, *, dataset: str = "cifar10", threat_model: str = "Linf") -> nn.Module:
    """Build an architecture from ``pkg.mod:callable``, ``path/file.py:callable`` or
    ``robustbench:NAME`` (random weights). ``arch_kwargs`` are passed to the callable.
    Whatever the architecture code raises (SystemExit included) becomes a LoadError."""
    if not isinstance(spec, str) or not spec.strip():
        raise LoadError(f"arch (--arch) must be a string such as package.module:callable, path/to/file.py:callable "
                        f"or robustbench:NAME, got {one_line(repr(spec)[:80])}")
    arch_kwargs = _arch_kwargs(arch_kwargs)
    shown = one_line(repr(spec))
    if spec.startswith("robustbench:"):
        ds, tm, name = _robustbench.parse_name(spec, dataset, threat_model)
        try:
            with _quiet():
                return _robustbench.architecture(name, ds, tm)
        except ArmetricsError:
            raise
        except Exception as exc:
            raise LoadError(f"--arch {shown}: robustbench could not build it ({type(exc).__name__}: "
                            f"{one_line(first_line(exc))})") from None
    if ":" not in spec:
        raise LoadError(f"malformed --arch {shown}: write package.module:callable, path/to/file.py:callable or robustbench:NAME")
    target, attr = spec.rsplit(":", 1)
    if target.endswith(".py"):
        module = _import_arch_file(Path(target))
    elif "/" in target or os.sep in target:
        raise LoadError(f"--arch {shown} names a path that is not a .py file: write path/to/file.py:callable "
                        f"or package.module:callable")
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise LoadError(f"cannot import --arch module {one_line(repr(target))} ({one_line(first_line(exc))}): "
                            f"check the name or install it") from None
        except SystemExit as exc:
            raise LoadError(f"--arch module {one_line(repr(target))} called {_exit_text(exc)} while being imported: "
                            f"an architecture module must only define the model") from None
        except Exception as exc:
            raise LoadError(f"--arch module {one_line(repr(target))} failed to import ({type(exc).__name__}: "
                            f"{one_line(first_line(exc))}): fix the module") from None
    try:
        fn = getattr(module, attr, None)
    except Exception:
        fn = None
    if not callable(fn):
        raise LoadError(f"--arch {shown}: {one_line(target)} has no callable {one_line(repr(attr))}")
    try:
        model = fn(**arch_kwargs)
    except SystemExit as exc:
        raise LoadError(f"--arch {shown} called {_exit_text(exc)}: an architecture callable must return the model") from None
    except TypeError as exc:
        raise LoadError(f"--arch {shown} rejected --arch-kwargs {one_line(json.dumps(arch_kwargs, default=repr))}: "
                        f"{one_line(first_line(exc))}") from None
    except Exception as exc:
        raise LoadError(f"--arch {shown} raised {type(exc).__name__}: {one_line(first_line(exc))}: "
                        f"fix the architecture code or --arch-kwargs") from None
    if not isinstance(model, nn.Module):
        raise LoadError(f"--arch {shown} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def extract_state_dict(obj: Any, keys: Sequence[str] = CHECKPOINT_KEYS) -> dict[str, torch.Tensor] | None:
    """The tensors of a state_dict or of a checkpoint dict wrapping one (under one of
    ``keys``, tried in order, nested up to three deep), else None."""
    if not isinstance(obj, dict):
        return None
    for _ in range(3):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        inner = next((obj[k] for k in keys if isinstance(obj.get(k), dict)), None)
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


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], *, source: str,
               fix: str = "check --arch and --arch-kwargs") -> None:
    """LoadError listing missing, unexpected and mis-shaped keys (first four of each)
    when ``state`` does not fit ``model`` key for key; nothing when it does."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return

    def show(items):
        return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {show(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {show(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches (file vs arch): {show(shapes)}")
    raise LoadError(one_line(f"{source} does not fit the architecture — {'; '.join(parts)}: {fix}"))


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], *, source: str,
                    fix: str = "check --arch and --arch-kwargs") -> nn.Module:
    """``load_state_dict(strict=True)`` after :func:`align_keys`, with an error listing
    missing, unexpected and mis-shaped keys (:func:`check_fits`)."""
    state = align_keys(state, model.state_dict().keys())
    check_fits(model, state, source=source, fix=fix)
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


def _mean_std(mean: Any, std: Any) -> tuple[list[float], list[float]]:
    mean = checks.numbers_list(mean, "mean (--mean)", error=LoadError)
    std = checks.numbers_list(std, "std (--std)", positive=True, error=LoadError)
    if len(mean) != len(std):
        raise LoadError("--mean and --std need the same number of values (one per channel)")
    return mean, std


def add_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """Make ``model`` take inputs in [0, 1] when it expects ``(x - mean)/std``.

    Regular modules get a forward pre-hook, so layer names stay as they were;
    TorchScript modules (which take no hooks) are wrapped, their layers then named
    ``model.<name>``. ``std`` must be finite and positive."""
    mean, std = _mean_std(mean, std)
    norm = Normalize(mean, std)
    if isinstance(model, torch.jit.ScriptModule):
        return _NormalizedScript(norm, model)

    def pre_hook(_module, args):  # norm is not registered as a submodule: names unchanged
        return (norm.to(args[0].device)(args[0]),) + tuple(args[1:])

    model.register_forward_pre_hook(pre_hook)
    return model


# --------------------------------------------------------------------------- arguments
def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise LoadError(f"{name} must be True or False, got {one_line(repr(value)[:80])}")
    return value


def _text(value: Any, name: str, example: str) -> str:
    if not isinstance(value, str) or not value:
        raise LoadError(f"{name} must be a non-empty string such as {example}, got {one_line(repr(value)[:80])}")
    return value


def _arch_kwargs(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise LoadError(f"arch_kwargs (--arch-kwargs) must be a dict of keyword arguments such as "
                        f'{{"num_classes": 10}}, got {one_line(repr(value)[:80])}')
    return dict(value)


def _source(value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise LoadError(f"source (MODEL) must be a checkpoint path or 'robustbench:NAME', got {one_line(repr(value)[:80])}")
    return value


def _directory(value: Any, name: str) -> Path:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise LoadError(f"{name} must be a directory path, got {one_line(repr(value)[:80])}")
    return Path(value)


# --------------------------------------------------------------------------- main entry
def load_model(
    source: str | Path,
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    *,
    trust_pickle: bool = False,
    trust_code: bool = False,
    model_dir: str | Path = "models",
    dataset: str = "cifar10",
    threat_model: str = "Linf",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Load a model for analysis: eval mode, parameters frozen, on ``device``.

    ``source`` is a checkpoint file or ``robustbench:NAME`` /
    ``robustbench:DATASET/THREAT/NAME``. ``arch`` is needed for weight-only files
    (state_dicts, checkpoint dicts, safetensors). ``trust_code`` (or its older name
    ``trust_pickle``; either trusts both) lets the file run code: pickled Python
    objects, TorchScript archives, torch.export programs outside the allow-list. The
    arguments are checked first (LoadError; ConfigError for ``device``). The result
    carries ``model.armetrics_info`` (a :class:`ModelInfo`) for the report.
    """
    source = _source(source)
    if arch is not None:
        _text(arch, "arch (--arch)", "nets.py:make_model")
    arch_kwargs = _arch_kwargs(arch_kwargs)
    trusted = _flag(trust_pickle, "trust_pickle (--trust-pickle)") | _flag(trust_code, "trust_code (--trust-code)")
    model_dir = _directory(model_dir, "model_dir (--model-dir)")
    dataset = _text(dataset, "dataset (--dataset)", "'cifar10'")
    threat_model = _text(threat_model, "threat_model (--threat-model)", "'Linf'")
    if (mean is None) != (std is None):
        raise LoadError("give both --mean and --std (or neither)")
    if mean is not None:
        mean, std = _mean_std(mean, std)
    dev = checks.device(device)
    if source.startswith("robustbench:"):
        model, info = _load_robustbench(source, model_dir, dataset, threat_model, trusted)
    else:
        model, info = _load_file(Path(source), arch, arch_kwargs, trusted, dev, dataset, threat_model)
    if mean is not None:
        model = add_normalization(model, mean, std)
        info.notes.append(f"inputs normalized with mean={list(mean)} std={list(std)}")
    model = eval_mode(model.to(dev))
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
    """The format of a checkpoint file after every check that needs no loader: a regular
    file, not empty, not an HTML page, a torch archive with plausible member sizes."""
    st = _regular(path)
    kind, infos = _sniff(path, st.st_size)
    shown = _show(path)
    if kind == "empty":
        raise LoadError(f"{shown} is empty (0 bytes): download or save it again")
    if kind == "html":
        raise LoadError(
            f"{shown} is an HTML page, not a checkpoint (a failed download, e.g. a Google Drive "
            f"warning page?): download the file itself again"
        )
    if kind == "zip":
        raise LoadError(f"{shown} is a zip archive but not a torch archive: pass the checkpoint file itself")
    if kind == "unknown":
        raise LoadError(
            f"{shown} is not a recognised checkpoint (state_dict, TorchScript, .pt2, .safetensors): "
            f"check the file"
        )
    if infos:
        check_zip_members(shown, infos, st.st_size)
    return kind


def _load_file(path, arch, arch_kwargs, trusted, device, dataset, threat_model):
    kind = _check_file(path)
    shown = _show(path)
    if kind == "torchscript" and not trusted:
        raise UnsafeCodeError(
            f"{shown} is a TorchScript archive: it is code (its forward and __setstate__ are programs that can "
            f"read and write files) and armetrics does not run code from a checkpoint unless told to: {TRUST_FIX}"
        )
    info = ModelInfo(source=str(path), name=path.stem, format=kind, sha256=sha256_file(path, "checkpoint", LoadError), arch=arch)
    if kind == "torchscript":
        try:
            with _quiet():
                return torch.jit.load(str(path), map_location=device), info
        except Exception as exc:
            raise LoadError(f"{shown} is a damaged TorchScript archive ({one_line(first_line(exc))}): save it again") from None
    if kind == "export":
        return _load_export(path, trusted, info)
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            with _quiet():
                state = load_file(str(path), device=str(device))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise LoadError(f"{shown} is a damaged .safetensors file ({one_line(first_line(exc))}): save it again") from None
        obj: Any = state
    else:  # torch-zip or legacy pickle
        obj = _torch_load(path, trusted, device)

    if isinstance(obj, nn.Module):
        info.format = "pickled-module"
        return obj, info
    if isinstance(obj, dict):
        module = next((obj[k] for k in CHECKPOINT_KEYS if isinstance(obj.get(k), nn.Module)), None)
        if module is not None:
            info.format = "pickled-module"
            return module, info
    info.format = "safetensors" if kind == "safetensors" else "state_dict"
    if arch is not None and arch.startswith("robustbench:"):  # the zoo's unwrapping (also 'last')
        return _zoo_arch_file(path, obj, arch, dataset, threat_model, info), info
    state = extract_state_dict(obj)
    if state is None:
        raise LoadError(
            f"{shown} holds a {type(obj).__name__} that is neither a model nor a state_dict "
            f"(looked for keys {', '.join(CHECKPOINT_KEYS)}): save model.state_dict()"
        )
    if arch is None:
        return _identified(path, obj, state, dataset, threat_model, info), info
    model = build_arch(arch, arch_kwargs, dataset=dataset, threat_model=threat_model)
    return load_state_into(model, state, source=shown), info


def _identified(path: Path, obj: Any, state: dict, dataset: str, threat_model: str, info: ModelInfo) -> nn.Module:
    """A state_dict without ``--arch``: its architecture found from its keys and shapes
    (:mod:`armetrics.signature`), recorded as ``info.arch`` (a spec ``--arch`` accepts)
    with the reason in ``info.notes``."""
    from . import signature
    from .functional import first_output

    shown = _show(path)

    def load(spec: str) -> nn.Module:
        if spec.startswith("robustbench:"):
            return _zoo_arch_file(path, obj, spec, dataset, threat_model, ModelInfo(source="", name="", format=""))
        with _quiet():
            return load_state_into(build_arch(spec), dict(state), source=shown)

    def logits_of(model: nn.Module, shape: tuple) -> torch.Tensor:
        x = torch.rand((2, *shape), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return first_output(model.eval()(x)).float()

    found, model = signature.identify(state, load, logits_of)
    info.arch = found.spec
    info.input_shape = found.input_shape
    info.notes.append(found.message)
    if found.spec.startswith("robustbench:"):
        _zoo_fields(info, found.spec, dataset, threat_model)
    return model


def _zoo_arch_file(path: Path, obj: Any, arch: str, dataset: str, threat_model: str, info: ModelInfo) -> nn.Module:
    """``--arch robustbench:NAME FILE``: the file read as the entry's own weight file is
    read (its wrappers, prefixes, key renames and tolerated buffers: robustbench's
    ``load_model``), so a file downloaded from RobustBench loads under any name."""
    _zoo_fields(info, arch, dataset, threat_model)
    ds, tm, name = _robustbench.parse_name(arch, dataset, threat_model)
    count = len(_robustbench.weight_paths(name, ".", ds, tm))
    if count > 1:
        raise LoadError(f"--arch {_show(arch)}: RobustBench ships {name} as {count} weight files (an ensemble), "
                        f"not one: place them in DIR/{ds}/{tm}/ and load robustbench:{ds}/{tm}/{name} --model-dir DIR")
    try:
        with _quiet():
            return _robustbench.load_from(name, ds, tm, [path], lambda _: obj)
    except ArmetricsError:
        raise
    except (RuntimeError, KeyError, ValueError) as exc:
        raise LoadError(f"{_show(path)} does not fit --arch {_show(arch)} ({one_line(first_line(exc))}): "
                        f"check the file and --arch") from None


def _zoo_fields(info: ModelInfo, spec: str, dataset: str, threat_model: str) -> None:
    """Record a zoo entry's dataset, threat model and RobustBench preprocessing on ``info``."""
    ds, tm, name = _robustbench.parse_name(spec, dataset, threat_model)
    info.dataset, info.threat_model = ds, tm
    info.preprocessing = _robustbench.preprocessing(name, ds, tm)
    info.input_shape = _robustbench.input_shape(name, ds, tm)


def _load_robustbench(source, model_dir, dataset, threat_model, trusted):
    """A zoo entry built as robustbench builds it, its weight files read here (every
    check of :func:`_check_file`, ``weights_only`` unless trusted) and placed as
    robustbench places them (:func:`armetrics._robustbench.load`)."""
    ds, tm, name = _robustbench.parse_name(source, dataset, threat_model)
    paths = _robustbench.weight_paths(name, model_dir, ds, tm)
    for p in paths:
        if p.exists() or p.is_symlink():
            _check_file(p)
    sha = sha256_files(paths, "checkpoint", LoadError) if all(p.is_file() for p in paths) else None
    info = ModelInfo(source=f"robustbench:{ds}/{tm}/{name}", name=name, format="robustbench",
                     sha256=sha, arch=f"robustbench:{ds}/{tm}/{name}")
    _zoo_fields(info, info.source, ds, tm)
    cpu = torch.device("cpu")

    def read(path: Path) -> Any:  # every path passed _check_file above
        return _torch_load(path, trusted, cpu)

    try:
        with _quiet(), _guarded_loads(trusted, _show(paths[0])):
            model = _robustbench.load(name, model_dir, ds, tm, read)
    except ArmetricsError:
        raise
    except pickle.UnpicklingError as exc:
        raise _unsafe_error(paths[0], exc) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise LoadError(f"{_show(paths[0])} could not be loaded as RobustBench's {name} ({type(exc).__name__}: "
                        f"{one_line(first_line(exc))}): download it again") from None
    return model, info
