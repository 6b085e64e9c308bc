"""The docs agree with the code: every probe option they name exists, every link and
repository path they give resolves inside the repository, every ``Class.attribute`` and
``armetrics.module.name`` they mention exists, and the example of
``docs/writing-a-probe.md`` runs as written and computes what it says."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import armetrics as am
from armetrics.errors import ConfigError
from armetrics.probe import Batch
from armetrics.registry import _PROBES, list_probes
from armetrics.stats import MAX_BINS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DOC_FILES = sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]
EXAMPLE_DOC = DOCS / "writing-a-probe.md"
EXAMPLE_PROBE = "logit_norm"
#: words that stand for "some probe" in the docs (``--set probe.opt=value``)
PLACEHOLDERS = {"probe", "PROBE", "p", "name", "NAME"}
#: ``<probe>.<ext>`` is a file name (``smoothness.md``, ``r.spectrum.npz``), not an option
FILE_EXTENSIONS = {"md", "py", "npz", "json", "csv", "png", "html", "pt", "txt"}
#: backticked paths starting with these are repository paths and must exist
REPO_PREFIXES = ("armetrics/", "tests/", "docs/", "examples/", "benchmarks/", "../", "./")

FENCE = re.compile(r"^( {0,3})(```|~~~).*?^\1\2[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HTML_REF = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']*)[\"']", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$", re.MULTILINE)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def without_code_blocks(text: str) -> str:
    return FENCE.sub("", text)


def prose(text: str) -> str:
    """Markdown text without fenced code blocks and inline code spans."""
    return INLINE_CODE.sub("", without_code_blocks(text))


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


# --------------------------------------------------------------------------- the example
def load_example(directory: Path):
    """Write the example probe of writing-a-probe.md, exactly as it stands, as a module
    in ``directory`` and import it (which registers it). Returns (module, class)."""
    blocks = [b for b in python_blocks(EXAMPLE_DOC.read_text()) if "@register_probe" in b]
    assert len(blocks) == 1, f"{rel(EXAMPLE_DOC)}: expected one python block defining a probe, found {len(blocks)}"
    path = directory / "docs_example_probe.py"
    path.write_text(blocks[0])
    name = "_armetrics_docs_example_probe"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        _PROBES.pop(EXAMPLE_PROBE, None)
        raise
    cls = am.get_probe(EXAMPLE_PROBE)
    assert cls.__module__ == name, f"the example must register the probe {EXAMPLE_PROBE!r}"
    return module, cls


@pytest.fixture(scope="module")
def example_probe(tmp_path_factory):
    """The probe class of docs/writing-a-probe.md, registered for this module's tests only."""
    _, cls = load_example(tmp_path_factory.mktemp("example"))
    yield cls
    _PROBES.pop(EXAMPLE_PROBE, None)
    sys.modules.pop("_armetrics_docs_example_probe", None)


def direct_norms(model: nn.Module, data, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample L2 norms of the logits and of ``layer``'s output, computed with a plain
    loop over the same batches (float64 norms of the float32 outputs)."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: seen.append(out))
    logit_norms, layer_norms = [], []
    try:
        with torch.no_grad():
            for x, _y in data:
                seen.clear()
                logits = model(x)
                logit_norms.append(logits.double().norm(dim=1))
                layer_norms.append(seen[-1].flatten(1).double().norm(dim=1))
    finally:
        handle.remove()
    return torch.cat(logit_norms).numpy(), torch.cat(layer_norms).numpy()


def test_writing_a_probe_example_runs_and_is_right(example_probe, tiny_net, tiny_npz):
    data = am.load_data(tiny_npz, batch_size=16)
    report = am.analyze(tiny_net, data, [EXAMPLE_PROBE], options={EXAMPLE_PROBE: {"layer": "conv", "bins": 7}})
    summary = report.summary(EXAMPLE_PROBE)
    logit_norms, conv_norms = direct_norms(tiny_net, data, "conv")
    assert summary["n"] == len(logit_norms) == 64
    assert summary["logit_norm_mean"] == pytest.approx(math.fsum(logit_norms) / 64, rel=1e-9)
    assert summary["layer_norm_mean"] == pytest.approx(math.fsum(conv_norms) / 64, rel=1e-9)
    assert abs(summary["layer_norm_mean"] - summary["logit_norm_mean"]) > 1e-3  # the option changes what is measured

    hist = report.data["probes"][EXAMPLE_PROBE]["distributions"]["logit_norm"]
    edges = np.linspace(0, 50, 8)
    np.testing.assert_allclose(hist["edges"], edges)
    assert hist["counts"] == np.histogram(logit_norms[logit_norms <= 50], bins=edges)[0].tolist()
    assert sum(hist["counts"]) + hist["overflow"] + hist["underflow"] == 64
    assert report.data["probes"][EXAMPLE_PROBE]["config"] == {"bins": 7, "layer": "conv"}

    plain = am.analyze(tiny_net, data, [EXAMPLE_PROBE]).summary(EXAMPLE_PROBE)
    assert plain["logit_norm_mean"] == summary["logit_norm_mean"]
    assert "layer_norm_mean" not in plain


def test_writing_a_probe_example_works_as_a_new_module_of_the_package(tmp_path, tiny_net, tiny_npz, tiny_arch):
    """The page's promise, kept literally: the example saved as a new file under
    ``armetrics/probes/`` (of a copy of the package) is found by the registry and runs
    from the CLI as the page says, with no edit anywhere else."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "armetrics", site / "armetrics", ignore=shutil.ignore_patterns("__pycache__"))
    (block,) = [b for b in python_blocks(EXAMPLE_DOC.read_text()) if "@register_probe" in b]
    (site / "armetrics" / "probes" / "logit_norm.py").write_text(block)
    torch.save(tiny_net.state_dict(), tmp_path / "tiny.pt")
    env = {**os.environ, "PYTHONPATH": str(site)}
    listing = subprocess.run([sys.executable, "-m", "armetrics", "probes"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"^logit_norm\b.*Mean L2 norm of the logit vector", listing.stdout, re.MULTILINE), listing.stdout
    run = subprocess.run([sys.executable, "-m", "armetrics", "analyze", "tiny.pt", "--arch", tiny_arch,
                          "--data", str(tiny_npz), "--probes", "logit_norm", "--set", "logit_norm.layer=conv",
                          "--quiet", "--out", "r.json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    report = am.Report.load(tmp_path / "r.json")
    assert report.data["armetrics_version"] == am.__version__
    summary = report.summary("logit_norm")
    logit_norms, conv_norms = direct_norms(tiny_net, am.load_data(tiny_npz), "conv")
    assert summary["n"] == 64
    assert summary["logit_norm_mean"] == pytest.approx(math.fsum(logit_norms) / 64, rel=1e-6)
    assert summary["layer_norm_mean"] == pytest.approx(math.fsum(conv_norms) / 64, rel=1e-6)
    assert not (ROOT / "armetrics" / "probes" / "logit_norm.py").exists(), "the copy, not this checkout, holds it"


def test_writing_a_probe_example_merges_exactly_and_survives_no_data(example_probe):
    """Two shards merged equal one run bit for bit, also where float ``+=`` would round
    differently (1e16 + 1 + 1 in one run is 1e16, 1e16 + (1 + 1) is not); no data gives
    NaN, not a ZeroDivisionError; an unbounded option is refused."""
    def batch(value: float, offset: int) -> Batch:
        logits = torch.tensor([[value, 0.0]], dtype=torch.float64)
        return Batch(x=torch.zeros(1, 1, 1, 1), y=torch.zeros(1, dtype=torch.long), logits=logits,
                     features={}, model=nn.Identity(), offset=offset)

    batches = [batch(1e16, 0), batch(1.0, 1), batch(1.0, 2)]

    def run(part):
        probe = example_probe()
        for b in part:
            probe.update(b)
        return probe

    whole = run(batches).compute().summary
    merged = run(batches[:1]).merge(run(batches[1:])).compute().summary
    assert merged == whole
    assert whole["logit_norm_mean"] == (1e16 + 2) / 3 and whole["n"] == 3

    empty = example_probe(layer="conv").compute().summary
    assert empty["n"] == 0 and math.isnan(empty["logit_norm_mean"]) and math.isnan(empty["layer_norm_mean"])
    for bins in (0, MAX_BINS + 1):
        with pytest.raises(ConfigError, match="bins"):
            example_probe(bins=bins)


# --------------------------------------------------------------------------- options
def options_by_probe() -> dict[str, set[str]]:
    return {name: set(am.get_probe(name).options()) for name in list_probes()}


OPTION_REF = re.compile(r"(?<![\w./-])([A-Za-z_]\w*)\.([A-Za-z_]\w*)\b")
SET_REF = re.compile(r"--set[ =]+['\"]?([\w{}<>-]+)\.([\w{}<>-]+)")


def option_mentions(text: str, probes: set[str]) -> list[tuple[str, str, int]]:
    """(probe, option, line) for every ``probe.option`` in ``text`` (code included)."""
    found = []
    for m in OPTION_REF.finditer(text):
        probe, option = m.group(1), m.group(2)
        if probe in probes and option not in FILE_EXTENSIONS:
            found.append((probe, option, text.count("\n", 0, m.start()) + 1))
    return found


def summary_keys_by_probe(model: nn.Module, data_path: Path) -> dict[str, set[str]]:
    """The summary keys each built-in probe reports with its default options (run on a
    tiny model): the ``probe.key`` names of audit policies and ``summary.csv`` columns."""
    builtin = [n for n in list_probes() if am.get_probe(n).__module__.startswith("armetrics.probes.")]
    report = am.analyze(model, am.load_data(data_path, n=8, batch_size=8), probes=builtin, seed=0, progress=False)
    return {name: set(report.summary(name)) for name in report.probes}


def test_every_probe_option_named_in_the_docs_exists(example_probe, tiny_net, tiny_npz):
    """`--set probe.option=...` and `probe.option` anywhere in the docs (code blocks
    included; the example probe of writing-a-probe.md registered) name real options —
    or, for `probe.key` outside `--set`, a summary key the probe reports (audit policies)."""
    options = options_by_probe()
    assert EXAMPLE_PROBE in options
    keys = summary_keys_by_probe(tiny_net, tiny_npz)
    assert {"ece", "accuracy"} <= keys["confidence"] and "robust_accuracy" in keys["robust_accuracy"]
    bad = []
    for doc in DOC_FILES:
        text = doc.read_text()
        for probe, option, line in option_mentions(text, set(options)):
            if option not in options[probe] and option not in keys.get(probe, ()):
                bad.append(f"{rel(doc)}:{line}: {probe}.{option} (options of {probe}: {', '.join(sorted(options[probe]))}; "
                           f"summary keys: {', '.join(sorted(keys.get(probe, ())))})")
        for m in SET_REF.finditer(text):
            probe, line = m.group(1), text.count(chr(10), 0, m.start()) + 1
            if probe not in PLACEHOLDERS and probe not in options:
                bad.append(f"{rel(doc)}:{line}: --set {probe}.{m.group(2)}: no probe {probe!r}")
            elif probe in options and m.group(2) not in options[probe]:  # a summary key is no option
                bad.append(f"{rel(doc)}:{line}: --set {probe}.{m.group(2)}: not an option of {probe} "
                           f"({', '.join(sorted(options[probe]))})")
    assert not bad, "options named in the docs that do not exist:\n" + "\n".join(bad)


def options_table(text: str) -> list[str]:
    """Backticked names in the first column of the table under ``## Options``."""
    section = re.search(r"^## Options\s*$(.*?)(?=^## |\Z)", without_code_blocks(text), re.MULTILINE | re.DOTALL)
    if section is None:
        return []
    names = []
    for row in re.findall(r"^\|([^|\n]*)\|", section.group(1), re.MULTILINE):
        names += re.findall(r"`([^`]+)`", row)
    return names


def test_each_probe_page_documents_exactly_its_options():
    pages = {p.stem: p for p in (DOCS / "probes").glob("*.md")}
    shipped_probes = {n for n in list_probes() if am.get_probe(n).__module__.startswith("armetrics.probes.")}
    assert shipped_probes <= set(pages), f"built-in probes without a page in docs/probes/: {sorted(shipped_probes - set(pages))}"
    bad = []
    for name, page in sorted(pages.items()):
        assert name in list_probes(), f"{rel(page)} documents no registered probe"
        documented = options_table(page.read_text())
        actual = set(am.get_probe(name).options())
        if set(documented) != actual or len(documented) != len(set(documented)):
            bad.append(f"{rel(page)}: the Options table lists {sorted(documented)}, the probe has {sorted(actual)}")
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------- code references
CLASS_REF = re.compile(r"(?<![\w.])(Probe|Batch|Context|ProbeResult|Report|Data|Histogram|QuantileSketch|ExactSum)"
                       r"\.([a-z_]\w*)\b")
MODULE_REF = re.compile(r"(?<![\w./])armetrics((?:\.\w+)+)(?![\w/])")


def class_has(cls: type, attr: str) -> bool:
    """``cls.attr`` exists as a class attribute, a dataclass field or an attribute
    ``__init__`` (or any method) assigns as ``self.attr``."""
    if hasattr(cls, attr) or attr in getattr(cls, "__dataclass_fields__", {}):
        return True
    return re.search(rf"\bself\.{re.escape(attr)}\s*(?::[^=\n]+)?=", inspect.getsource(cls)) is not None


def resolve(dotted: str):
    """Import the longest module prefix of ``dotted`` and getattr the rest."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_every_class_attribute_and_module_name_in_the_docs_exists():
    from armetrics import probe, report, stats
    from armetrics.data import Data

    classes = {"Probe": probe.Probe, "Batch": probe.Batch, "Context": probe.Context,
               "ProbeResult": probe.ProbeResult, "Report": report.Report, "Data": Data,
               "Histogram": stats.Histogram, "QuantileSketch": stats.QuantileSketch, "ExactSum": stats.ExactSum}
    bad = []
    for doc in DOC_FILES:
        text = doc.read_text()
        for m in CLASS_REF.finditer(text):
            if not class_has(classes[m.group(1)], m.group(2)):
                bad.append(f"{rel(doc)}: {m.group(0)}")
        for m in MODULE_REF.finditer(text):
            try:
                resolve(m.group(0))
            except (ImportError, AttributeError) as exc:
                bad.append(f"{rel(doc)}: {m.group(0)} ({type(exc).__name__}: {exc})")
    assert not bad, "names in the docs that the code does not have:\n" + "\n".join(sorted(set(bad)))


# --------------------------------------------------------------------------- links and paths
def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: inline markup dropped, lower case, every
    character but letters, digits, ``_``, ``-`` and spaces removed, spaces -> ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"<[^>]+>", "", text)  # html tags
    text = text.replace("`", "")
    text = re.sub(r"(\*\*|__|\*|_)(?=\S)(.+?)(?<=\S)\1", r"\2", text)  # emphasis
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(md: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(without_code_blocks(md.read_text())):
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        out.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    return out


def link_targets(text: str) -> list[str]:
    body = prose(text)
    return LINK.findall(body) + REF_DEF.findall(body) + HTML_REF.findall(body)


def check_link(doc: Path, target: str) -> str | None:
    """Why ``target`` (a link in ``doc``) is broken, or None."""
    if re.match(r"https?://", target):
        return None
    if re.match(r"[A-Za-z][\w+.-]*:", target) or target.startswith(("/", "\\")):
        return "leaves the repository (only http(s) URLs may)"
    path_part, _, anchor = target.partition("#")
    dest = (doc.parent / path_part).resolve() if path_part else doc.resolve()
    try:
        dest.relative_to(ROOT)
    except ValueError:
        return "leaves the repository"
    if not dest.exists():
        return "no such file"
    if anchor:
        if dest.suffix != ".md":
            return "an anchor into a file that is not markdown"
        if anchor not in anchors(dest):
            return f"no heading with anchor #{anchor} in {rel(dest)}"
    return None


def test_every_doc_link_resolves_inside_the_repository():
    bad = []
    count = 0
    for doc in DOC_FILES:
        for target in link_targets(doc.read_text()):
            count += 1
            why = check_link(doc, target)
            if why:
                bad.append(f"{rel(doc)}: ({target}): {why}")
    assert count > 30  # the link pattern finds the docs' links
    assert not bad, "broken links:\n" + "\n".join(bad)


def expand_braces(token: str) -> list[str]:
    m = re.search(r"\{([^{}]*,[^{}]*)\}", token)
    if not m:
        return [token]
    return [x for alt in m.group(1).split(",") for x in expand_braces(token[:m.start()] + alt + token[m.end():])]


def test_every_repository_path_in_the_docs_exists():
    """Backticked paths such as `armetrics/probes/smoothness.py` or `tests/test_x.py::name`
    (relative to the repository root; `../x` relative to the page) exist in the repository."""
    bad = []
    count = 0
    for doc in DOC_FILES:
        for _, token in INLINE_CODE.findall(without_code_blocks(doc.read_text())):
            token = token.strip()
            if not token.startswith(REPO_PREFIXES) or re.search(r"\s", token):
                continue
            for path in expand_braces(token.split("::")[0]):
                path = re.sub(r"(\.py):\w+$", r"\1", path)  # file.py:callable
                if re.search(r"[<>*{}]", path):
                    continue  # a template, not a path
                count += 1
                base = doc.parent if path.startswith(("../", "./")) else ROOT
                dest = (base / path).resolve()
                try:
                    dest.relative_to(ROOT)
                except ValueError:
                    bad.append(f"{rel(doc)}: `{token}` is outside the repository")
                    continue
                if not dest.exists():
                    bad.append(f"{rel(doc)}: `{token}` does not exist")
    assert count > 20
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------- the checkers themselves
def test_the_checkers_catch_what_they_are_for(tmp_path):
    assert github_slug("Writing (never destroying what is there)") == "writing-never-destroying-what-is-there"
    assert github_slug("`smoothness` and **ε**: a/b") == "smoothness-and-ε-ab"
    assert option_mentions("--set smoothness.modules=x; see smoothness.md, r.spectrum.npz",
                           {"smoothness", "spectrum"}) == [("smoothness", "modules", 1)]
    assert options_table("## Options\n\n| option | d |\n|---|---|\n| `a`, `b` | 1 |\n\n## Next\n| `c` | |\n") == ["a", "b"]
    doc = DOCS / "index.md"
    assert check_link(doc, "../../outside.md") == "leaves the repository"
    assert check_link(doc, "file:///etc/passwd").startswith("leaves")
    assert check_link(doc, "/etc/passwd").startswith("leaves")
    assert check_link(doc, "missing.md") == "no such file"
    assert check_link(doc, "report-schema.md#no-such-heading").startswith("no heading")
    assert check_link(doc, "report-schema.md#side-files") is None
    assert check_link(doc, "https://example.org/x") is None
    assert link_targets("[a](x.md) `[b](y.md)`\n```\n[c](z.md)\n```\n![i](img/p.png \"t\")\n") == ["x.md", "img/p.png"]
