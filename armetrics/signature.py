"""Which architecture built a checkpoint: its state_dict's key names and tensor shapes
are a signature, matched against every architecture armetrics knows.

The candidates are every RobustBench zoo entry (all datasets and threat models),
torchvision's classification models and timm's registered models. Their signatures are
computed without allocating weights (built on the ``meta`` device; a constructor that
needs real tensors there, e.g. ``.item()`` on a drop-path schedule, is built with only
its parameters on ``meta``) and kept in an index on disk (:func:`cache_dir`), one file
per combination of package versions (:func:`versions_key`): a new torch, torchvision,
timm or robustbench builds a new index.

A signature is *canonical*: ``num_batches_tracked`` buffers and the input-normalisation
buffers robustbench tolerates missing (``mu``, ``sigma``, ``mean``, ``std``,
``normalize.mean``, ``normalize.std``) are left out, and the ``module.``,
``_orig_mod.`` and ``model.`` prefixes shared by every key are stripped, the same
wrapping the loader undoes (:func:`armetrics.loading.align_keys`).

Matching (:func:`identify`) is exact: every canonical key with its shape. Candidates
with the same signature whose modules print alike (the same ``repr``: classes,
activations, strides) are one architecture; when they print differently, each is
loaded with the checkpoint's weights and run on one seeded random input, and if they
all give the same logits they are equivalent and the first (zoo, then torchvision,
then timm) is chosen; otherwise none is chosen and they are listed. Differences that
change neither the weights, the ``repr`` nor those logits cannot be seen.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.metadata
import json
import os
import re
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from .errors import LoadError, first_line, one_line

#: Bumped when the index's content or the canonical form changes.
FORMAT = 1
#: Buffers some checkpoints lack and their loaders tolerate (robustbench's
#: ``_safe_load_state_dict``), left out of every signature.
OPTIONAL = frozenset({"mu", "sigma", "mean", "std", "normalize.mean", "normalize.std"})
PREFIXES = ("module.", "_orig_mod.", "model.")
#: What a cached spec may be (the index is data, never code to import blindly).
SPEC_FORMS = (re.compile(r"robustbench:[a-z0-9]+/[A-Za-z0-9_]+/[A-Za-z0-9_.\-]+"),
              re.compile(r"torchvision\.models:[a-z][a-z0-9_]*"),
              re.compile(r"(timm|robustbench)(\.[A-Za-z_][A-Za-z0-9_]*)+:[A-Za-z_][A-Za-z0-9_]*"))
#: Largest index file (and inflated key list) read; the real ones are a few MB.
MAX_INDEX_BYTES = 256 * 2**20
#: Candidates listed in an ambiguity or no-match message.
SHOWN = 3


@dataclass(frozen=True)
class Candidate:
    """One known architecture: its ``--arch`` spec, where it comes from, its class,
    parameter count, signature digest, ``repr`` digest and input shape (C, H, W)."""

    spec: str
    source: str
    arch: str
    parameters: int
    digest: str
    build: str
    input_shape: tuple[int, int, int]


# --------------------------------------------------------------------------- signatures
def canonical(shapes: dict[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Key -> shape with the optional buffers dropped and shared prefixes stripped."""
    out = {k: tuple(int(d) for d in v) for k, v in shapes.items() if not k.endswith("num_batches_tracked")}
    while True:
        out = {k: v for k, v in out.items() if k not in OPTIONAL}
        prefix = next((p for p in PREFIXES if out and all(k.startswith(p) for k in out)), None)
        if prefix is None:
            return out
        out = {k[len(prefix):]: v for k, v in out.items()}


def shapes_of(state: dict) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a state_dict (meta tensors too)."""
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def digest(canon: dict[str, tuple[int, ...]]) -> str:
    text = json.dumps(sorted((k, list(v)) for k, v in canon.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- building
@contextlib.contextmanager
def _registered_on_meta(buffers: bool) -> Iterator[None]:
    """Every parameter (and buffer, with ``buffers``) moved to ``meta`` as it is
    registered; tensors the constructor keeps to itself stay real."""
    from torch import nn

    orig_p, orig_b = nn.Module.register_parameter, nn.Module.register_buffer

    def register_parameter(self, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        orig_p(self, name, param)

    def register_buffer(self, name, tensor, persistent=True):
        if tensor is not None and tensor.device.type != "meta":
            tensor = tensor.to("meta")
        orig_b(self, name, tensor, persistent)

    nn.Module.register_parameter = register_parameter
    if buffers:
        nn.Module.register_buffer = register_buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = orig_p, orig_b


#: In-place ops that only change values (initialisers and their arithmetic), skipped on
#: ``meta`` tensors while a candidate is built: their meta kernels are Python
#: decompositions (timm's ``trunc_normal_`` alone took most of a cold build).
VALUE_INPLACE = frozenset(
    "normal_ uniform_ fill_ zero_ clamp_ clamp_min_ clamp_max_ mul_ add_ sub_ div_ erfinv_ exponential_ "
    "bernoulli_ random_ copy_ cauchy_ log_normal_ geometric_ addcmul_ addcdiv_ sqrt_ neg_ abs_ masked_fill_ "
    "index_fill_ lerp_ pow_ exp_ log_ tanh_ sigmoid_ floor_ ceil_ round_ sign_ reciprocal_ rsqrt_".split())


def _skip_init_on_meta():
    """A dispatch mode returning :data:`VALUE_INPLACE` ops on ``meta`` tensors unrun."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class SkipInit(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            first = args[0] if args else None
            if (getattr(first, "is_meta", False) and func.overloadpacket.__name__ in VALUE_INPLACE):
                return first
            return func(*args, **(kwargs or {}))

    return SkipInit()


def build_empty(make: Callable[[], Any]):
    """``make()`` with no weights allocated: on the ``meta`` device; else (a constructor
    that reads tensors it made, e.g. ``.item()`` of a drop-path schedule) with its
    parameters and buffers put on ``meta`` as they are registered; else with only its
    parameters there (a constructor that also reads its buffers)."""
    import torch

    try:  # registration moves to meta too: the legacy torch.Tensor(n, m) ignores the device context
        with torch.device("meta"), _registered_on_meta(buffers=True), _skip_init_on_meta():
            return make()
    except Exception:
        pass
    try:
        with _registered_on_meta(buffers=True), _skip_init_on_meta():
            return make()
    except Exception:
        with _registered_on_meta(buffers=False), _skip_init_on_meta():
            return make()


def _zoo_sources() -> Iterator[tuple[str, str, Callable[[], Any], tuple[int, int, int]]]:
    from . import _robustbench as rb

    for ds, tm in rb.zoo_pairs("all", "all"):
        side = 224 if ds == "imagenet" else 32
        for name in rb.zoo_names(ds, tm):
            yield (f"robustbench:{ds}/{tm}/{name}", "robustbench",
                   lambda n=name, d=ds, t=tm: rb.architecture(n, d, t), (3, side, side))


def _torchvision_sources() -> Iterator[tuple[str, str, Callable[[], Any], tuple[int, int, int]]]:
    import torchvision

    for name in torchvision.models.list_models(module=torchvision.models):
        side = 299 if name == "inception_v3" else 224
        yield (f"torchvision.models:{name}", "torchvision",
               lambda n=name: getattr(torchvision.models, n)(), (3, side, side))


def _timm_sources() -> Iterator[tuple[str, str, Callable[[], Any], tuple[int, int, int]]]:
    import timm
    from timm.models import _registry

    for name in timm.list_models():
        fn = _registry._model_entrypoints.get(name)
        if fn is None:
            continue
        cfg = _registry.get_pretrained_cfg(name)
        size = tuple(getattr(cfg, "input_size", None) or (3, 224, 224))
        # the module that defines it (timm's, or robustbench's for the models it registers)
        yield (f"{fn.__module__}:{name}", "timm", lambda n=name: timm.create_model(n), size)


#: Candidate sources in order of preference among equivalent architectures.
SOURCES: dict[str, Callable[[], Iterable]] = {"robustbench": _zoo_sources, "torchvision": _torchvision_sources,
                                              "timm": _timm_sources}


def versions_key() -> str:
    """The versions the index depends on (and the index format), as a short hash."""
    parts = [f"format={FORMAT}"]
    for pkg in ("torch", "torchvision", "timm", "robustbench"):
        try:
            parts.append(f"{pkg}={importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{pkg}=none")
    return hashlib.sha256(";".join(parts).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """``$ARMETRICS_CACHE_DIR``, else ``$XDG_CACHE_HOME/armetrics``, else ``~/.cache/armetrics``."""
    if os.environ.get("ARMETRICS_CACHE_DIR"):
        return Path(os.environ["ARMETRICS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "armetrics"


def _index_paths(directory: Path | None = None) -> tuple[Path, Path]:
    d = directory if directory is not None else cache_dir()
    key = versions_key()
    return d / f"architectures-{key}.json", d / f"architectures-{key}-keys.json.gz"


def build_index(sources: Sequence[str] | None = None, only: Callable[[str], bool] | None = None,
                progress: Callable[[int, str], None] | None = None, directory: Path | None = None) -> Path:
    """Build and write the index of the candidates of ``sources`` (``only(spec)`` to
    keep some); returns its path. One architecture in memory at a time, on ``meta``."""
    from . import _robustbench as rb

    sources = list(SOURCES) if sources is None else list(sources)
    index_path, keys_path = _index_paths(directory)
    index_path.parent.mkdir(parents=True, exist_ok=True)  # an unwritable cache fails now, not after minutes
    _write(index_path.parent / ".write-test", b"")
    (index_path.parent / ".write-test").unlink()
    candidates: list[dict] = []
    keys: dict[str, str] = {}  # digest -> its sorted [key, shape] list as JSON text (compact while building)
    skipped: list[str] = []
    count = 0
    with warnings.catch_warnings(), rb._quiet(), rb._offline():
        warnings.simplefilter("ignore")
        for source in sources:
            for spec, src, make, size in SOURCES[source]():
                if only is not None and not only(spec):
                    continue
                count += 1
                if progress is not None:
                    progress(count, spec)
                try:
                    model = build_empty(make)
                except Exception as exc:  # noqa: BLE001 - any constructor failure: not a candidate here
                    skipped.append(f"{spec}: {type(exc).__name__}: {one_line(first_line(exc))[:160]}")
                    continue
                canon = canonical(shapes_of(model.state_dict()))
                d = digest(canon)
                if d not in keys:
                    keys[d] = json.dumps(sorted([k, list(v)] for k, v in canon.items()), separators=(",", ":"))
                candidates.append(asdict(Candidate(
                    spec=spec, source=src, arch=type(model).__name__,
                    parameters=int(sum(p.numel() for p in model.parameters())), digest=d,
                    build=hashlib.sha256(repr(model).encode()).hexdigest()[:16], input_shape=tuple(size))))
                del model
    body = "{" + ",".join(f"{json.dumps(d)}:{text}" for d, text in keys.items()) + "}"
    _write(keys_path, gzip.compress(body.encode(), mtime=0))
    _write(index_path, json.dumps({"format": FORMAT, "versions": versions_key(), "created": time.time(),
                                   "sources": list(sources), "candidates": candidates, "skipped": skipped},
                                  separators=(",", ":")).encode())
    return index_path


def _write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- the index
class Index:
    """The candidates of one index file, by signature digest."""

    def __init__(self, candidates: list[Candidate], keys_path: Path):
        self.candidates = candidates
        self.by_digest: dict[str, list[Candidate]] = {}
        for c in candidates:
            self.by_digest.setdefault(c.digest, []).append(c)
        self._keys_path = keys_path

    def keys(self) -> dict[str, dict[str, tuple[int, ...]]]:
        """Canonical key -> shape of every distinct signature (read on demand, at most
        :data:`MAX_INDEX_BYTES` inflated); LoadError when the file is damaged."""
        import zlib

        try:
            inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip
            text = inflate.decompress(self._keys_path.read_bytes(), MAX_INDEX_BYTES)
            if inflate.unconsumed_tail:
                raise ValueError(f"more than {MAX_INDEX_BYTES >> 20} MiB inflated")
            raw = json.loads(text)
            return {d: {k: tuple(v) for k, v in items} for d, items in raw.items()}
        except (OSError, ValueError, TypeError, zlib.error) as exc:
            raise LoadError(f"the architecture index's key list {self._keys_path} is damaged ({one_line(str(exc))[:120]}): "
                            f"delete it (it is rebuilt) or pass --arch SPEC") from None


def load_index(directory: Path | None = None) -> Index | None:
    """The index for the installed package versions; None when absent or unreadable
    (then it is built again)."""
    index_path, keys_path = _index_paths(directory)
    try:
        if index_path.stat().st_size > MAX_INDEX_BYTES:
            return None
        raw = json.loads(index_path.read_bytes())
        if raw.get("format") != FORMAT or raw.get("versions") != versions_key() or not keys_path.is_file():
            return None
        cands = [Candidate(**{**c, "input_shape": tuple(c["input_shape"])}) for c in raw["candidates"]]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not all(any(f.fullmatch(c.spec) for f in SPEC_FORMS) for c in cands):
        return None  # not written by armetrics: rebuilt, never imported from
    return Index(cands, keys_path)


def index(build: Callable[[], Any] | None = None) -> Index:
    """The index, built first when the installed versions have none: by ``build()``,
    by default :func:`build_in_child`."""
    found = load_index()
    if found is not None:
        return found
    print(f"armetrics: indexing the architectures of RobustBench, torchvision and timm for the installed versions "
          f"(once per version; minutes) in {cache_dir()}", file=sys.stderr, flush=True)
    try:
        (build or build_in_child)()
    except OSError as exc:
        raise _unwritable(exc) from None
    found = load_index()
    if found is None:
        raise LoadError(f"the architecture index in {cache_dir()} could not be read back: pass --arch SPEC")
    return found


def _unwritable(exc: OSError) -> LoadError:
    return LoadError(f"cannot write the architecture index in {cache_dir()} ({exc.strerror or exc}): "
                     f"set ARMETRICS_CACHE_DIR to a writable directory, or pass --arch SPEC")


#: The building interpreter's allocator setting: glibc's mmap threshold fixed at 128 KiB,
#: so the large transient tensors some constructors allocate (BEiT-L/512 built with its
#: buffers on ``meta``: ~850 MB, all freed) go back to the system when freed instead of
#: staying in the heap (glibc's dynamic threshold grows to 32 MiB). Not set in the
#: analysing process, whose tensors are better served by the dynamic threshold.
BUILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def build_in_child(only: str | None = None) -> None:
    """:func:`build_index` in a fresh interpreter with :data:`BUILD_ENV` (``only``: build
    just that spec, for tests): its memory is the child's, released when it exits, and
    bounded (``benchmarks/identify.py``). LoadError (the child's one line) when it fails."""
    import subprocess

    cmd = [sys.executable, "-m", "armetrics.signature", *(["--only", only] if only else [])]
    proc = subprocess.run(cmd, env={**os.environ, **BUILD_ENV}, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        last = one_line(lines[-1])[:400] if lines else f"exit status {proc.returncode}"
        raise LoadError(last.removeprefix("error: ") if last.startswith("error: ")
                        else f"building the architecture index failed ({last}): pass --arch SPEC")


def _main(argv: Sequence[str]) -> int:
    """``python -m armetrics.signature [--only SPEC]``: build the index (one line on
    stderr and exit 1 on failure)."""
    only = argv[argv.index("--only") + 1] if "--only" in argv else None
    try:
        build_index(only=only.__eq__ if only else None)
    except OSError as exc:
        print(f"error: {_unwritable(exc)}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- matching
@dataclass
class Identified:
    """The chosen spec, the candidates sharing its signature, and the sentence saying so."""

    spec: str
    arch: str
    matches: list[Candidate]
    message: str
    #: the chosen candidate's default input (C, H, W)
    input_shape: tuple[int, ...] | None = None


def _describe(c: Candidate) -> str:
    return f"{c.arch} ({c.spec}, {c.parameters / 1e6:.1f}M parameters)"


def nearest(canon: dict[str, tuple[int, ...]], idx: Index, k: int = SHOWN) -> list[tuple[Candidate, int, int, int]]:
    """The ``k`` candidates whose signatures differ least from ``canon``: (candidate,
    missing, unexpected, mismatched) — keys the candidate has and the checkpoint lacks,
    keys only the checkpoint has, keys in both with different shapes."""
    scored = []
    for d, keys in idx.keys().items():
        both = [key for key in keys if key in canon]  # O(candidate's keys): a checkpoint of 10^6 keys costs nothing more
        mismatched = sum(1 for key in both if canon[key] != keys[key])
        missing, unexpected = len(keys) - len(both), len(canon) - len(both)
        scored.append((missing + unexpected + mismatched, d, missing, unexpected, mismatched))
    scored.sort()
    return [(idx.by_digest[d][0], m, u, mm) for _, d, m, u, mm in scored[:k]]


def identify(state: dict, load: Callable[[str], Any], logits_of: Callable[[Any, tuple], Any],
             idx: Index | None = None) -> tuple[Identified, Any]:
    """The architecture of ``state`` and the model ``load(spec)`` built with its weights.
    ``logits_of(model, input_shape)`` runs a model on the seeded probe input. LoadError
    when nothing matches (the nearest candidates named) or when candidates that compute
    different functions match (listed)."""
    idx = idx if idx is not None else index()
    canon = canonical(shapes_of(state))
    matches = idx.by_digest.get(digest(canon), [])
    if not matches:
        near = "; ".join(f"{_describe(c)}: {m} missing, {u} unexpected, {mm} mismatched keys"
                         for c, m, u, mm in nearest(canon, idx))
        raise LoadError(f"no architecture armetrics knows ({len(idx.candidates)} from "
                        f"{', '.join(sorted({c.source for c in idx.candidates})) or 'no source'}) has the keys and "
                        f"shapes of this checkpoint ({len(canon)} tensors); nearest: {near or 'none'}: pass --arch SPEC")
    builds = list({c.build: c for c in reversed(matches)}.values())[::-1]  # first of each distinct repr, in order
    model = load(builds[0].spec)
    if len(builds) > 1:
        shape = builds[0].input_shape
        classes: list[tuple[Candidate, Any]] = [(builds[0], logits_of(model, shape))]  # one per function
        for c in builds[1:]:
            out = _logits_or_none(load, logits_of, c, shape)
            if out is None or not any(_close(ref, out) for _, ref in classes):
                classes.append((c, out))
        if len(classes) > 1:
            listed = ", ".join(_describe(c) for c, _ in classes[:SHOWN + 2])
            more = len(classes) - (SHOWN + 2)
            raise LoadError(f"{len(classes)} architectures have exactly this checkpoint's keys and shapes but "
                            f"compute different functions: {listed}{f' and {more} more' if more > 0 else ''}: "
                            f"pass --arch with the one that built it")
    chosen = builds[0]
    others = len(matches) - 1
    also = f" and {others} other {'entry' if others == 1 else 'entries'} with identical signatures" if others else ""
    message = f"architecture: {chosen.arch} ({chosen.spec}{also}), 100% of keys and shapes"
    return Identified(spec=chosen.spec, arch=chosen.arch, matches=matches, message=message,
                      input_shape=tuple(chosen.input_shape)), model


def _logits_or_none(load, logits_of, cand: Candidate, shape: tuple):
    try:
        return logits_of(load(cand.spec), shape)
    except Exception:  # noqa: BLE001 - a candidate that cannot take the weights or the input differs
        return None


def _close(ref, other) -> bool:
    """Equal up to float rounding, on the scale of how much ``ref`` varies with the input
    (random weights can leave logits that are nearly the biases, equal for any input)."""
    if other is None or ref.shape != other.shape:
        return False
    spread = float((ref - ref.mean(0)).abs().max())
    return float((ref - other).abs().max()) <= 1e-4 * float(ref.abs().max()) + 1e-3 * spread


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
