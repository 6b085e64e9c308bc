"""Architecture from the weights (armetrics.signature): state_dicts of zoo, torchvision
and timm models identified with no --arch and loaded with the logits of the explicit
--arch; unknown and ambiguous checkpoints refused with the nearest / the list; the
index rebuilt when a package version changes."""

from __future__ import annotations

import gzip
import json
import os

import pytest
import torch
from torch import nn

import armetrics as am
from armetrics import signature as sig
from armetrics.errors import LoadError
from armetrics_testkit import make_tiny_net

#: One zoo entry per architecture family, two that share Carmon2019Unlabeled's WRN-28-10.
ZOO = ["cifar10/Linf/Andriushchenko2020Understanding", "cifar10/Linf/Sehwag2021Proxy_R18",
       "cifar10/Linf/Carmon2019Unlabeled", "cifar10/Linf/Sehwag2020Hydra", "cifar10/Linf/Wang2020Improving",
       "cifar100/Linf/Wang2023Better_WRN-28-10", "cifar10/Linf/Dai2021Parameterizing",
       "cifar10/Linf/Debenedetti2022Light_XCiT-S12", "imagenet/Linf/Salman2020Do_R18",
       "imagenet/corruptions/Tian2022Deeper_DeiT-S"]
TORCHVISION = ["mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5", "resnet18"]
TIMM = ["timm.models.vision_transformer:vit_tiny_patch16_224", "timm.models.convnext:convnext_atto",
        "timm.models.mobilenetv3:mobilenetv3_small_050", "timm.models.resnet:resnet18"]
WANTED = {f"robustbench:{e}" for e in ZOO} | {f"torchvision.models:{n}" for n in TORCHVISION} | set(TIMM)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    """An index of the WANTED candidates only (the whole one takes minutes), as the
    user's cache for this module's tests."""
    d = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("ARMETRICS_CACHE_DIR", str(d))
    sig.build_index(only=WANTED.__contains__)
    yield d
    mp.undo()


def _random_state(model: nn.Module) -> dict:
    """The architecture's own initialisation moved by noise (BN statistics too)."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(v.shape, generator=gen)
        else:
            out[k] = v + 0.05 * torch.randn(v.shape, generator=gen)
    return out


def _saved(tmp_path, spec: str, **kwargs):
    model = am.loading.build_arch(spec, **kwargs)
    state = _random_state(model)
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    return path


def _side(spec: str) -> int:
    return 224 if ("imagenet" in spec or not spec.startswith("robustbench:")) else 32


@pytest.mark.parametrize("spec", ["robustbench:cifar10/Linf/Andriushchenko2020Understanding",
                                  "robustbench:cifar10/Linf/Sehwag2021Proxy_R18",
                                  "robustbench:cifar100/Linf/Wang2023Better_WRN-28-10",
                                  "robustbench:cifar10/Linf/Dai2021Parameterizing",
                                  "robustbench:cifar10/Linf/Debenedetti2022Light_XCiT-S12",
                                  "robustbench:imagenet/corruptions/Tian2022Deeper_DeiT-S",
                                  "torchvision.models:mobilenet_v3_small", "torchvision.models:squeezenet1_1",
                                  "timm.models.vision_transformer:vit_tiny_patch16_224",
                                  "timm.models.convnext:convnext_atto"])
def test_identified_and_same_logits_as_explicit_arch(index_dir, tmp_path, spec):
    path = _saved(tmp_path, spec)
    found = am.load_model(path)
    assert found.armetrics_info.arch == spec
    assert any(n.startswith("architecture: ") and spec in n for n in found.armetrics_info.notes)
    explicit = am.load_model(path, arch=spec)
    x = torch.rand(2, 3, _side(spec), _side(spec), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(found(x), explicit(x))


def test_entries_with_one_signature_are_named_together(index_dir, tmp_path):
    path = _saved(tmp_path, "robustbench:cifar10/Linf/Sehwag2020Hydra")
    info = am.load_model(path).armetrics_info
    assert info.arch == "robustbench:cifar10/Linf/Carmon2019Unlabeled"  # the first of the zoo's order
    note = next(n for n in info.notes if n.startswith("architecture: "))
    assert note == ("architecture: WideResNet (robustbench:cifar10/Linf/Carmon2019Unlabeled and 2 other entries "
                    "with identical signatures), 100% of keys and shapes")
    assert info.dataset == "cifar10" and info.threat_model == "Linf"


def test_same_signature_different_function_is_ambiguous(index_dir, tmp_path):
    """torchvision's and timm's ResNet-18 compute the same function; RobustBench's
    ImageNet entry normalizes its input first (no parameters): none is chosen."""
    path = _saved(tmp_path, "torchvision.models:resnet18")
    with pytest.raises(LoadError) as err:
        am.load_model(path)
    msg = str(err.value)
    assert "2 architectures have exactly this checkpoint's keys and shapes but compute different functions" in msg
    assert "torchvision.models:resnet18" in msg and "robustbench:imagenet/Linf/Salman2020Do_R18" in msg
    assert "timm.models.resnet:resnet18" not in msg  # equivalent to torchvision's: not a second choice
    assert msg.endswith("pass --arch with the one that built it") and "\n" not in msg


def test_unknown_architecture_names_the_nearest(index_dir, tmp_path):
    net = make_tiny_net()
    path = tmp_path / "tiny.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(LoadError) as err:
        am.load_model(path)
    msg = str(err.value)
    assert msg.startswith(f"no architecture armetrics knows ({len(WANTED)} from robustbench, timm, torchvision)")
    assert msg.endswith("pass --arch SPEC") and msg.count("missing") == 3 and "\n" not in msg
    # the counts of the first named candidate, recomputed here
    idx = sig.load_index()
    canon = sig.canonical(sig.shapes_of(net.state_dict()))
    best, missing, unexpected, mismatched = sig.nearest(canon, idx)[0]
    keys = dict((k, tuple(v)) for k, v in json.loads(gzip.decompress(
        sig._index_paths()[1].read_bytes()))[best.digest])
    assert missing == len(keys.keys() - canon.keys()) and unexpected == len(canon.keys() - keys.keys())
    assert mismatched == sum(1 for k in keys.keys() & canon.keys() if keys[k] != canon[k])
    assert f"{best.spec}, " in msg and f"{missing} missing, {unexpected} unexpected, {mismatched} mismatched" in msg


def test_canonical_form():
    shapes = {"module.normalize.mean": (1, 3, 1, 1), "module.normalize.std": (1, 3, 1, 1),
              "module.model.conv.weight": (4, 3, 3, 3), "module.model.bn.num_batches_tracked": ()}
    assert sig.canonical(shapes) == {"conv.weight": (4, 3, 3, 3)}
    assert sig.canonical({"model.a": (1,), "b": (2,)}) == {"model.a": (1,), "b": (2,)}  # not shared: kept


def _cand(spec, build, d="d1"):
    return sig.Candidate(spec=spec, source="test", arch="Sequential", parameters=15, digest=d, build=build,
                         input_shape=(4,))


def test_identify_rules_on_constructed_candidates(tmp_path):
    """Equivalent builds (Linear vs Linear + Identity) give the first; a ReLU after the
    Linear (no parameters, different function) makes it ambiguous; the probe input is
    the first candidate's shape."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    state = {f"0.{k}": v for k, v in lin.state_dict().items()}
    builds = {"a": lambda: nn.Sequential(nn.Linear(4, 3)), "b": lambda: nn.Sequential(nn.Linear(4, 3), nn.Identity()),
              "c": lambda: nn.Sequential(nn.Linear(4, 3), nn.ReLU())}

    def load(spec):
        m = builds[spec]()
        m.load_state_dict(state, strict=False)
        return m

    def logits_of(model, shape):
        with torch.no_grad():
            return model(torch.randn(5, *shape, generator=torch.Generator().manual_seed(0)))

    d = sig.digest(sig.canonical(sig.shapes_of(state)))
    keys = tmp_path / "k.json.gz"
    keys.write_bytes(gzip.compress(b"{}"))
    two = sig.Index([_cand("a", "ra", d), _cand("b", "rb", d)], keys)
    found, model = sig.identify(state, load, logits_of, idx=two)
    assert found.spec == "a" and len(found.matches) == 2 and "and 1 other entry" in found.message
    three = sig.Index([_cand("a", "ra", d), _cand("b", "rb", d), _cand("c", "rc", d)], keys)
    with pytest.raises(LoadError, match=r"2 architectures .* compute different functions: Sequential \(a, .*Sequential \(c"):
        sig.identify(state, load, logits_of, idx=three)
    same = sig.Index([_cand("a", "ra", d), _cand("b", "ra", d)], keys)  # one repr: no forward needed
    found, _ = sig.identify(state, lambda s: load("a"), lambda *a: pytest.fail("ran a forward"), idx=same)
    assert found.spec == "a"


def test_index_rebuilt_when_a_version_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("ARMETRICS_CACHE_DIR", str(tmp_path))
    built = []

    def source():
        built.append(1)
        yield ("torchvision.models:fake", "torchvision", lambda: nn.Linear(2, 2), (2,))

    monkeypatch.setattr(sig, "SOURCES", {"torchvision": source})
    first = sig.index(sig.build_index)  # in this process, where the fake source is
    assert built == [1] and [c.spec for c in first.candidates] == ["torchvision.models:fake"]
    assert first.candidates[0].parameters == 6
    sig.index(sig.build_index)
    assert built == [1]  # cached
    real = sig.importlib.metadata.version
    monkeypatch.setattr(sig.importlib.metadata, "version", lambda pkg: "99.0" if pkg == "timm" else real(pkg))
    sig.index(sig.build_index)
    assert built == [1, 1] and len(list(tmp_path.glob("architectures-*-keys.json.gz"))) == 2


def test_a_sweep_says_what_it_chose_for_each_model(index_dir, tmp_path, cli_inproc):
    path = _saved(tmp_path, "robustbench:cifar10/Linf/Sehwag2021Proxy_R18")
    proc = cli_inproc("analyze", str(path), "--probes", "spectrum", "--out-dir", str(tmp_path / "out"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith(str(path)))
    assert row.endswith("; architecture: ResNet (robustbench:cifar10/Linf/Sehwag2021Proxy_R18), 100% of keys and shapes")


def test_a_tampered_index_is_rebuilt_not_imported(tmp_path, monkeypatch):
    monkeypatch.setenv("ARMETRICS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(sig, "SOURCES", {"torchvision": lambda: iter(
        [("torchvision.models:fake", "torchvision", lambda: nn.Linear(2, 2), (2,))])})
    path = sig.build_index(sources=["torchvision"])
    raw = json.loads(path.read_text())
    raw["candidates"][0]["spec"] = "os:system"
    path.write_text(json.dumps(raw))
    assert sig.load_index() is None
    assert [c.spec for c in sig.index(sig.build_index).candidates] == ["torchvision.models:fake"]


def test_cli_says_what_it_chose(index_dir, tmp_path, cli_inproc):
    path = _saved(tmp_path, "robustbench:cifar10/Linf/Sehwag2021Proxy_R18")
    out = tmp_path / "r.json"
    proc = cli_inproc("analyze", str(path), "--probes", "spectrum", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "architecture: ResNet (robustbench:cifar10/Linf/Sehwag2021Proxy_R18), 100% of keys and shapes" in proc.stderr
    model = am.Report.load(out).data["model"]
    assert model["arch"] == "robustbench:cifar10/Linf/Sehwag2021Proxy_R18"
    assert any(n.startswith("architecture: ResNet") for n in model["notes"])
    again = cli_inproc("analyze", str(path), "--arch", model["arch"], "--probes", "spectrum", "--quiet",
                       "--out", str(tmp_path / "again.json"))  # the recorded spec repeats the run
    assert again.returncode == 0 and "architecture:" not in again.stderr
    a, b = (am.Report.load(p).data["probes"]["spectrum"]["summary"] for p in (out, tmp_path / "again.json"))
    assert a == b


def test_hostile_checkpoints_and_cache(index_dir, tmp_path, monkeypatch):
    """200,000 tiny tensors: every key unexpected for the nearest candidates (counted per
    candidate key, not per checkpoint key); a cache directory that cannot be written:
    one line naming it and the fixes."""
    state = {f"w{i}": torch.zeros(1) for i in range(200_000)}
    near = sig.nearest(sig.canonical(sig.shapes_of(state)), sig.load_index())
    assert len(near) == 3 and all(u == 200_000 and mm == 0 for _, _, u, mm in near)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("ARMETRICS_CACHE_DIR", str(blocker / "sub"))
    for build in (sig.build_index, None):  # in this process; in the child interpreter (the default)
        with pytest.raises(LoadError) as err:
            sig.index(build)
        assert "cannot write the architecture index in" in str(err.value) and "ARMETRICS_CACHE_DIR" in str(err.value)
        assert str(blocker / "sub") in str(err.value) and "\n" not in str(err.value)


def test_the_default_build_runs_in_a_child_with_its_allocator_setting(tmp_path, monkeypatch):
    """index() builds in a fresh interpreter (given BUILD_ENV); this process never builds."""
    monkeypatch.setenv("ARMETRICS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(sig, "build_index", lambda **kw: pytest.fail("built in the analysing process"))
    seen = {}
    import subprocess

    real_run = subprocess.run

    def run(cmd, **kw):
        seen.update(cmd=cmd, env=kw["env"])
        return real_run(cmd, **kw)

    monkeypatch.setattr(subprocess, "run", run)
    sig.build_in_child(only="torchvision.models:resnet18")
    assert seen["cmd"][1:3] == ["-m", "armetrics.signature"]
    assert seen["env"]["MALLOC_MMAP_THRESHOLD_"] == "131072" and seen["env"]["ARMETRICS_CACHE_DIR"] == os.environ["ARMETRICS_CACHE_DIR"]
    idx = sig.load_index()
    assert [c.spec for c in idx.candidates] == ["torchvision.models:resnet18"]


def test_a_gzip_bomb_as_key_list_is_one_line(tmp_path, monkeypatch):
    import zlib

    keys = tmp_path / "k.json.gz"
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    monkeypatch.setattr(sig, "MAX_INDEX_BYTES", 2**20)  # the real cap (256 MiB) the same way, smaller
    keys.write_bytes(comp.compress(b" " * (3 * 2**20)) + comp.flush())  # 3 MiB of spaces in ~3 KB
    with pytest.raises(LoadError, match=r"key list .* is damaged \(more than 1 MiB inflated\): delete it"):
        sig.Index([], keys).keys()
    keys.write_bytes(b"not gzip")
    with pytest.raises(LoadError, match="is damaged"):
        sig.Index([], keys).keys()
