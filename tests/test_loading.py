"""Every loader format, the refusals, and the RobustBench-by-name path (offline)."""

from __future__ import annotations

import zipfile

import pytest
import torch
from torch import nn

import armetrics as am
from armetrics.errors import LoadError, UnsafeCodeError, UnsafePickleError
from armetrics.loading import align_keys, sniff

from armetrics_testkit import TINY_ARCH as ARCH, TinyNet


def same_outputs(a: nn.Module, b: nn.Module, shape=(5, 3, 8, 8)) -> bool:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


@pytest.fixture
def net(tiny_net):
    return tiny_net


def test_state_dict_with_arch(tmp_path, net):
    p = tmp_path / "sd.pt"
    torch.save(net.state_dict(), p)
    m = am.load_model(p, arch=ARCH)
    assert same_outputs(m, net)
    assert not m.training
    assert all(not q.requires_grad for q in m.parameters())
    assert m.armetrics_info.format == "state_dict"
    assert len(m.armetrics_info.sha256) == 64


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict", "net"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "model.", "module.model."])
def test_checkpoint_dicts_and_prefixes(tmp_path, net, key, prefix):
    sd = {prefix + k: v for k, v in net.state_dict().items()}
    p = tmp_path / "ckpt.pth"
    torch.save({key: sd, "epoch": 3, "optimizer": {"lr": 0.1}}, p)
    m = am.load_model(p, arch=ARCH)
    assert same_outputs(m, net)


def test_align_keys_adds_model_prefix():
    state = {"conv.weight": torch.zeros(1)}
    assert set(align_keys(state, ["model.conv.weight"])) == {"model.conv.weight"}


def test_arch_kwargs_and_module_spec(tmp_path):
    net = nn.Linear(4, 3)
    p = tmp_path / "lin.pt"
    torch.save(net.state_dict(), p)
    m = am.load_model(p, arch="torch.nn:Linear", arch_kwargs={"in_features": 4, "out_features": 3})
    x = torch.rand(2, 4)
    assert torch.allclose(m(x), net(x))


def test_safetensors(tmp_path, net):
    from safetensors.torch import save_file

    p = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(p))
    m = am.load_model(p, arch=ARCH)
    assert same_outputs(m, net)
    assert m.armetrics_info.format == "safetensors"


def test_torchscript(tmp_path, net):
    p = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.trace(net, torch.rand(1, 3, 8, 8)), str(p))
    assert sniff(p) == "torchscript"
    with pytest.raises(UnsafeCodeError, match="TorchScript archive.*--trust-code"):
        am.load_model(p)  # TorchScript is code: refused unless trusted (issue 15)
    m = am.load_model(p, trust_code=True)
    assert same_outputs(m, net)


def test_torch_export(tmp_path, net):
    p = tmp_path / "prog.pt2"
    torch.export.save(torch.export.export(net, (torch.rand(2, 3, 8, 8),)), str(p))
    assert sniff(p) == "export"
    m = am.load_model(p)
    assert same_outputs(m, net, shape=(2, 3, 8, 8))


def test_full_pickle_refused_then_trusted(tmp_path, net):
    p = tmp_path / "full.pt"
    torch.save(net, p)
    with pytest.raises(UnsafePickleError, match="--trust-pickle"):
        am.load_model(p)
    m = am.load_model(p, trust_pickle=True)
    assert same_outputs(m, net)


class _Payload:
    """Unpickling this would create a file (the attack a malicious checkpoint makes)."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("wrap", ["bare", "in_state_dict"])
def test_malicious_pickle_never_executes(tmp_path, wrap):
    target = tmp_path / "pwned"
    payload = _Payload(str(target))
    obj = payload if wrap == "bare" else {"state_dict": {"w": torch.zeros(1)}, "extra": payload}
    p = tmp_path / "evil.pt"
    torch.save(obj, p)
    assert not target.exists()
    with pytest.raises(UnsafePickleError, match="trust-pickle"):
        am.load_model(p, arch=ARCH)
    assert not target.exists(), "the payload ran"
    # legacy (non-zip) pickle format, too
    p2 = tmp_path / "evil_legacy.pt"
    torch.save(obj, p2, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafePickleError):
        am.load_model(p2, arch=ARCH)
    assert not target.exists()


def test_malicious_export_archive_never_executes(tmp_path, net):
    """A .pt2 whose pickled member carries a payload is refused without running it."""
    good = tmp_path / "prog.pt2"
    torch.export.save(torch.export.export(net, (torch.rand(2, 3, 8, 8),)), str(good))
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt2"
    import io

    buf = io.BytesIO()
    torch.save(_Payload(str(target)), buf)
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(evil, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("sample_inputs/model.pt"):
                data = buf.getvalue()
            zout.writestr(item, data)
    with pytest.raises(LoadError):
        am.load_model(evil)
    assert not target.exists(), "the payload ran"


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>", "HTML page"),
    (b"\n  <html><body>Too many users have viewed or downloaded this file</body></html>", "HTML page"),
    (b"just some text", "not a recognised checkpoint"),
])
def test_bad_files(tmp_path, content, match):
    p = tmp_path / "model.pt"
    p.write_bytes(content)
    with pytest.raises(LoadError, match=match):
        am.load_model(p, arch=ARCH)


def test_truncated_checkpoint(tmp_path, net):
    p = tmp_path / "sd.pt"
    torch.save(net.state_dict(), p)
    data = p.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 100):
        q = tmp_path / f"cut{cut}.pt"
        q.write_bytes(data[:cut])
        with pytest.raises(LoadError, match="truncated or corrupt|damaged|not a recognised"):
            am.load_model(q, arch=ARCH)


def test_zip_that_is_not_torch(tmp_path):
    p = tmp_path / "model.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(LoadError, match="not a torch archive"):
        am.load_model(p, arch=ARCH)


def test_arch_mismatch_lists_keys(tmp_path):
    p = tmp_path / "sd.pt"
    torch.save(nn.Sequential(nn.Linear(4, 3)).state_dict(), p)
    with pytest.raises(LoadError) as err:
        am.load_model(p, arch=ARCH)
    msg = str(err.value)
    assert "missing keys: conv.weight" in msg and "unexpected keys: 0.weight" in msg
    assert "\n" not in msg


def test_shape_mismatch_named(tmp_path):
    p = tmp_path / "sd.pt"
    torch.save(make_tiny(num_classes=7).state_dict(), p)
    with pytest.raises(LoadError, match=r"shape mismatches .*fc.weight \(7, 16\) vs \(10, 16\)"):
        am.load_model(p, arch=ARCH)


def make_tiny(num_classes):
    return TinyNet(num_classes)


def test_state_dict_without_arch(tmp_path, net):
    p = tmp_path / "sd.pt"
    torch.save(net.state_dict(), p)
    with pytest.raises(LoadError, match="--arch"):
        am.load_model(p)


@pytest.mark.parametrize("spec,match", [
    ("nope", "malformed --arch"),
    ("missing_file.py:f", "does not exist"),
    ("armetrics_no_such_module:f", "cannot import"),
    ("torch.nn:NoSuchThing", "no callable"),
])
def test_bad_arch_specs(tmp_path, net, spec, match):
    p = tmp_path / "sd.pt"
    torch.save(net.state_dict(), p)
    with pytest.raises(LoadError, match=match):
        am.load_model(p, arch=spec)


def test_normalization_wrapper_keeps_names(tmp_path, net):
    p = tmp_path / "sd.pt"
    torch.save(net.state_dict(), p)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    m = am.load_model(p, arch=ARCH, mean=mean, std=std)
    x = torch.rand(3, 3, 8, 8)
    expected = net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    assert torch.allclose(m(x), expected, atol=1e-6)
    assert [n for n, _ in m.named_modules()] == [n for n, _ in net.named_modules()]
    with pytest.raises(LoadError, match="both --mean and --std"):
        am.load_model(p, arch=ARCH, mean=mean)


def test_import_is_lazy(cli):
    import subprocess
    import sys

    code = "import sys, armetrics; print('robustbench' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_autoattack_alias():
    from armetrics._robustbench import install_autoattack_alias

    install_autoattack_alias()
    import autoattack  # noqa: F401 - the alias must make this import work
    from autoattack import AutoAttack
    from autoattack.state import EvaluationState  # noqa: F401
    import pyautoattack

    assert AutoAttack is pyautoattack.AutoAttack


@pytest.fixture(scope="module")
def robustbench_dir(tmp_path_factory):
    """RobustBench's `Standard` WRN-28-10 with random weights, where robustbench expects it."""
    from armetrics._robustbench import architecture

    torch.manual_seed(0)
    model = architecture("Standard")
    root = tmp_path_factory.mktemp("models")
    path = root / "cifar10" / "Linf" / "Standard.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    return root, model


def test_robustbench_by_name_offline(robustbench_dir):
    root, reference = robustbench_dir
    x = torch.rand(2, 3, 32, 32)
    for name in ("robustbench:Standard", "robustbench:cifar10/Linf/Standard"):
        m = am.load_model(name, model_dir=root)
        with torch.no_grad():
            assert torch.allclose(m(x), reference.eval()(x), atol=1e-5)
        assert m.armetrics_info.source == "robustbench:cifar10/Linf/Standard"


def test_robustbench_arch_spec(robustbench_dir, tmp_path):
    root, reference = robustbench_dir
    p = tmp_path / "wrn.pt"
    torch.save(reference.state_dict(), p)
    m = am.load_model(p, arch="robustbench:Standard")
    assert sum(q.numel() for q in m.parameters()) == sum(q.numel() for q in reference.parameters())


def test_robustbench_missing_file_names_path(tmp_path):
    with pytest.raises(LoadError) as err:
        am.load_model("robustbench:Carmon2019Unlabeled", model_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt") in msg
    assert "cannot download" in msg
    assert not (tmp_path / "cifar10").exists() or not any((tmp_path / "cifar10").rglob("*.pt"))


def test_robustbench_html_file(tmp_path):
    p = tmp_path / "cifar10" / "Linf" / "Standard.pt"
    p.parent.mkdir(parents=True)
    p.write_text("<!DOCTYPE html><html>Google Drive can't scan this file for viruses</html>")
    with pytest.raises(LoadError, match="HTML page"):
        am.load_model("robustbench:Standard", model_dir=tmp_path)


def test_robustbench_unknown_name(tmp_path):
    with pytest.raises(LoadError, match="did you mean Standard"):
        am.load_model("robustbench:Standardd", model_dir=tmp_path)
