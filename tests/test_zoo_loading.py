"""RobustBench zoo entries load by name as robustbench's own ``load_model`` loads them
(issue 17): for the smallest entry of each architecture family robustbench builds here,
random weights are saved in each layout RobustBench distributes checkpoints in, and the
model armetrics loads must give robustbench's logits on the same file.

The reference is always robustbench: ``robustbench.utils.load_model(name, model_dir=DIR,
...)`` on the file in the layout robustbench itself reads for that entry (for the entries
robustbench fetches through timm or torchvision, with that library's download answered
by the same file). The weights are perturbed away from any fresh initialisation, so a
model whose weights were not loaded cannot pass. Nothing here touches the network.
"""

from __future__ import annotations

import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

import armetrics as am
from armetrics import _robustbench as rbm
from armetrics.errors import LoadError

ALL_LAYOUTS = ("plain", "state_dict", "model_state_dict", "last", "model", "module", "state_dict+module")


def layout(state: dict, kind: str):
    """``state`` saved the ways checkpoints of the zoo come: plain, wrapped, prefixed."""
    module = {f"module.{k}": v for k, v in state.items()}
    return {"plain": state, "state_dict": {"state_dict": state, "epoch": 100},
            "model_state_dict": {"model_state_dict": state, "optimizer_state_dict": {"lr": 0.1}},
            "last": {"last": state, "best": {k: torch.zeros_like(v) for k, v in state.items()}},
            "model": {"model": state, "epoch": 30}, "module": module,
            "state_dict+module": {"state_dict": module}}[kind]


def _drop(*prefixes):
    return lambda state: {k: v for k, v in state.items() if not k.startswith(prefixes)}


def _inner(state):
    """An ImageNet ``normalize_model`` checkpoint: the network's keys, no ``model.``, no normalizer."""
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


def _xcit_official(state):
    """XCiT as its authors publish it: ``pos_embeder.``, one ``qkv`` for class attention."""
    out = {k.replace("pos_embed.", "pos_embeder."): v for k, v in state.items()}
    for key in [k for k in out if ".attn.q." in k and k.startswith("cls_attn_blocks.")]:
        parts = [out.pop(key.replace(".q.", f".{c}.")) for c in "qkv"]
        out[key.replace(".q.", ".qkv.")] = torch.cat(parts, dim=0)
    return out


@dataclass
class Case:
    """A zoo entry, the tensors robustbench distributes for it (``distributed(state)`` of
    the weights it would load) in the ``wrap`` layout it distributes them in, and the
    other layouts armetrics must read."""

    family: str
    dataset: str
    threat: str
    name: str
    side: int = 32
    distributed: Callable = lambda state: state
    wrap: str = "plain"
    layouts: tuple = ("module", "state_dict+module")
    batch: int = 2
    notes: list = field(default_factory=list)


CASES = [
    Case("PreActResNet", "cifar10", "Linf", "Andriushchenko2020Understanding",
         wrap="last", layouts=ALL_LAYOUTS),
    Case("ResNet", "cifar10", "Linf", "Sehwag2021Proxy_R18", layouts=("model", "module")),
    Case("WideResNet (mu/sigma not in file)", "cifar10", "corruptions", "Hendrycks2020AugMix_WRN",
         distributed=_drop("mu", "sigma"), layouts=ALL_LAYOUTS),
    Case("PreActResNet ('last', mu/sigma not in file)", "cifar10", "corruptions", "Kireev2021Effectiveness_RLAT",
         distributed=_drop("mu", "sigma"), wrap="last", layouts=("plain",)),
    Case("DM-WideResNet SiLU", "cifar100", "Linf", "Wang2023Better_WRN-28-10", layouts=()),
    Case("DM-PreActResNet Swish", "cifar10", "Linf", "Rebuffi2021Fixing_R18_ddpm", layouts=("model",)),
    Case("PSSiLU WideResNet", "cifar10", "Linf", "Dai2021Parameterizing", layouts=()),
    Case("ResNeSt", "cifar10", "Linf", "Sehwag2021Proxy_ResNest152", layouts=(), batch=1),
    Case("ensemble of 3 ResNets", "cifar10", "Linf", "Chen2020Adversarial", layouts=("state_dict+module",)),
    Case("XCiT (timm)", "cifar10", "Linf", "Debenedetti2022Light_XCiT-S12", distributed=_xcit_official,
         wrap="model", layouts=("plain", "module")),
    Case("ImageNet ResNet", "imagenet", "Linf", "Salman2020Do_R18", side=224, batch=1, distributed=_inner,
         layouts=("module", "model_state_dict")),
    Case("ImageNet torchvision ResNet-50", "imagenet", "Linf", "Standard_R50", side=224, batch=1,
         layouts=("state_dict",)),
    Case("ImageNet DeiT (timm)", "imagenet", "corruptions", "Tian2022Deeper_DeiT-S", side=224, batch=1,
         wrap="model", layouts=("module",)),
]


@pytest.fixture(scope="module", autouse=True)
def no_network():
    """Fail loudly if anything opens a network connection."""
    mp = pytest.MonkeyPatch()

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket, "create_connection", refuse)
    yield
    mp.undo()


def _perturbed(model):
    """``model``'s weights moved off any initialisation (BN statistics too)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.is_floating_point():
                noise = torch.randn(t.shape, generator=gen, dtype=t.dtype)
                t.add_(noise * (0.05 if not key.endswith("running_var") else 0.0))
                if key.endswith("running_var"):
                    t.copy_(0.5 + torch.rand(t.shape, generator=gen, dtype=t.dtype))
    return model


def _weights(case: Case) -> list[dict]:
    """The state dicts robustbench would load for the entry (one per weight file)."""
    built = rbm.build(case.name, case.dataset, case.threat)
    _perturbed(built.model)
    if built.pretrained:  # fetched by timm / torchvision: the file holds that network's weights
        return [{k: v.clone() for k, v in built.pretrained[0].module.state_dict().items()}]
    members = getattr(built.model, "models", None)
    if len(rbm.weight_paths(case.name, "m", case.dataset, case.threat)) > 1:
        return [{k: v.clone() for k, v in m.state_dict().items()} for m in members]
    return [{k: v.clone() for k, v in built.model.state_dict().items()}]


def _save(root: Path, case: Case, objs: list) -> None:
    paths = rbm.weight_paths(case.name, root, case.dataset, case.threat)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for path, obj in zip(paths, objs):
        torch.save(obj, path)


def _robustbench_logits(root: Path, case: Case, x: torch.Tensor) -> torch.Tensor:
    """robustbench's ``load_model`` on the files in ``root``; a timm or torchvision
    download it asks for is answered by the weight file itself."""
    from robustbench.utils import load_model

    path = rbm.weight_paths(case.name, root, case.dataset, case.threat)[0]

    def local(url, *args, **kwargs):
        return torch.load(path, map_location="cpu", weights_only=True)

    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's notice about robustbench's pretrained=True
        mp.setattr("timm.models._builder.load_state_dict_from_url", local)
        mp.setattr("torchvision.models._api.load_state_dict_from_url", local)
        model = load_model(case.name, model_dir=str(root), dataset=case.dataset, threat_model=case.threat)
        with torch.no_grad():
            return model.eval()(x)


def _armetrics_logits(root: Path, case: Case, x: torch.Tensor):
    model = am.load_model(f"robustbench:{case.dataset}/{case.threat}/{case.name}", model_dir=root)
    with torch.no_grad():
        return model(x), model


@pytest.mark.parametrize("case", CASES, ids=[f"{c.family}:{c.name}" for c in CASES])
def test_same_logits_as_robustbench(case, tmp_path):
    rbm.import_robustbench()
    torch.manual_seed(1)
    x = torch.rand(case.batch, 3, case.side, case.side)
    weights = [case.distributed(w) for w in _weights(case)]
    _save(tmp_path, case, [layout(w, case.wrap) for w in weights])
    reference = _robustbench_logits(tmp_path, case, x)
    got, model = _armetrics_logits(tmp_path, case, x)
    torch.testing.assert_close(got, reference)
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    for kind in case.layouts:
        _save(tmp_path, case, [layout(w, kind) for w in weights])
        got, _ = _armetrics_logits(tmp_path, case, x)
        torch.testing.assert_close(got, reference, msg=lambda m: f"layout {kind}: {m}")


ARCH_FILE_CASES = [c for c in CASES if c.name in (
    "Andriushchenko2020Understanding", "Hendrycks2020AugMix_WRN", "Debenedetti2022Light_XCiT-S12", "Salman2020Do_R18")]


@pytest.mark.parametrize("case", ARCH_FILE_CASES, ids=[c.name for c in ARCH_FILE_CASES])
def test_arch_spec_reads_the_distributed_file(case, tmp_path):
    """``--arch robustbench:NAME FILE``: RobustBench's own file (wrapped in ``last``,
    without the mu/sigma buffers, XCiT in its authors' key names, an ImageNet file
    without the ``model.`` prefix) loads from any path with the zoo's logits."""
    torch.manual_seed(1)
    x = torch.rand(case.batch, 3, case.side, case.side)
    (weights,) = [case.distributed(w) for w in _weights(case)]
    _save(tmp_path / "zoo", case, [layout(weights, case.wrap)])
    reference, _ = _armetrics_logits(tmp_path / "zoo", case, x)
    path = tmp_path / "downloaded.pt"
    torch.save(layout(weights, case.wrap), path)
    model = am.load_model(path, arch=f"robustbench:{case.dataset}/{case.threat}/{case.name}")
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference)
    assert model.armetrics_info.arch == f"robustbench:{case.dataset}/{case.threat}/{case.name}"


def test_arch_spec_of_an_ensemble_is_refused_in_one_line(tmp_path):
    path = tmp_path / "m0.pt"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(LoadError) as err:
        am.load_model(path, arch="robustbench:Chen2020Adversarial")
    msg = str(err.value)
    assert "3 weight files" in msg and "--model-dir" in msg and "\n" not in msg


def test_zoo_fields_on_model_info(tmp_path):
    """dataset, threat model and RobustBench's preprocessing name on ``armetrics_info``."""
    cifar = Case("", "cifar10", "corruptions", "Hendrycks2020AugMix_WRN", distributed=_drop("mu", "sigma"))
    _save(tmp_path, cifar, [cifar.distributed(w) for w in _weights(cifar)])
    info = am.load_model("robustbench:Hendrycks2020AugMix_WRN", model_dir=tmp_path,
                         threat_model="corruptions").armetrics_info
    assert (info.dataset, info.threat_model, info.preprocessing) == ("cifar10", "corruptions", None)
    assert "preprocessing" not in info.to_dict() and info.to_dict()["dataset"] == "cifar10"
    assert rbm.preprocessing("Salman2020Do_R18", "imagenet", "Linf") == "Res256Crop224"
    assert rbm.preprocessing("Wong2020Fast", "imagenet", "Linf") == "Crop288"
    assert rbm.preprocessing("Tian2022Deeper_DeiT-S", "imagenet", "corruptions") == "BicubicRes248Crop224"
    from armetrics.preprocess import resolve

    for ds, tm in rbm.zoo_pairs("imagenet", "all"):
        for name in rbm.zoo_names(ds, tm):
            assert resolve(rbm.preprocessing(name, ds, tm)) is not None, name  # every ImageNet entry has one


def test_arch_spec_records_entry(tmp_path):
    model = rbm.architecture("Salman2020Do_R18", "imagenet", "Linf")
    path = tmp_path / "r18.pt"
    torch.save(model.state_dict(), path)
    m = am.load_model(path, arch="robustbench:imagenet/Linf/Salman2020Do_R18")
    assert m.armetrics_info.preprocessing == "Res256Crop224" and m.armetrics_info.dataset == "imagenet"
    assert m.armetrics_info.input_shape == (3, 224, 224)  # the crop: what weight probes trace without data
    assert m.armetrics_info.to_dict()["input_shape"] == [3, 224, 224]


def test_input_shape_of_every_entry_follows_its_preprocessing():
    from armetrics.preprocess import resolve

    sides = set()
    for ds, tm in rbm.zoo_pairs("all", "all"):
        for name in rbm.zoo_names(ds, tm):
            shape = rbm.input_shape(name, ds, tm)
            if ds == "imagenet":
                pre = resolve(rbm.preprocessing(name, ds, tm))
                assert shape == (3, pre.crop or pre.resize, pre.crop or pre.resize), name
                sides.add(shape[1])
            else:
                assert shape == (3, 32, 32), name
    assert 224 in sides and len(sides) > 1  # e.g. Crop288 entries


def test_wrong_file_is_one_line(tmp_path):
    case = Case("", "cifar10", "Linf", "Andriushchenko2020Understanding")
    _save(tmp_path, case, [{"conv1.weight": torch.zeros(3)}])
    with pytest.raises(LoadError) as err:
        am.load_model("robustbench:Andriushchenko2020Understanding", model_dir=tmp_path)
    msg = str(err.value)
    assert "does not fit" in msg and "missing keys" in msg and "\n" not in msg


def test_missing_file_names_path_and_source(tmp_path):
    with pytest.raises(LoadError) as err:
        am.load_model("robustbench:imagenet/corruptions/Tian2022Deeper_DeiT-S", model_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "imagenet" / "corruptions" / "Tian2022Deeper_DeiT-S.pt") in msg
    assert "tian2022deeper-deit-s.pth" in msg and "\n" not in msg
    assert not (tmp_path / "imagenet").exists()


def test_pickled_code_in_zoo_file_refused(tmp_path):
    case = Case("", "cifar10", "Linf", "Andriushchenko2020Understanding")
    weights = _weights(case)[0]
    _save(tmp_path, case, [{"last": weights, "args": Path("x")}])  # a pickled class: not a tensor
    with pytest.raises(LoadError, match="pickled Python objects"):
        am.load_model("robustbench:Andriushchenko2020Understanding", model_dir=tmp_path)
    m = am.load_model("robustbench:Andriushchenko2020Understanding", model_dir=tmp_path, trust_code=True)
    assert torch.equal(m.state_dict()["conv1.weight"], weights["conv1.weight"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="robustbench builds it on a GPU")
def test_entry_robustbench_cannot_build_is_one_line(tmp_path, cli_inproc):
    case = Case("", "cifar10", "Linf", "Bai2023Improving_edm")
    _save(tmp_path, case, [{"w": torch.zeros(1)}] * 3)
    res = cli_inproc("analyze", "robustbench:Bai2023Improving_edm", "--model-dir", str(tmp_path),
                     "-n", "2", "--probes", "accuracy", "-o", str(tmp_path / "r.json"))
    assert res.returncode == 1, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: robustbench cannot build cifar10/Linf/Bai2023Improving_edm")
    assert "CUDA" in lines[0] and "robustbench 1." in lines[0] and not res.stdout


def test_sha256_of_an_ensemble_covers_every_file(tmp_path):
    """Chen2020Adversarial ships 3 files: the recorded hash is of all of them in order,
    and changes when the last one does."""
    import hashlib

    case = next(c for c in CASES if c.name == "Chen2020Adversarial")
    weights = _weights(case)
    _save(tmp_path, case, weights)
    paths = rbm.weight_paths(case.name, tmp_path, case.dataset, case.threat)
    sha = am.load_model(f"robustbench:{case.name}", model_dir=tmp_path).armetrics_info.sha256
    assert sha == hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()
    weights[2] = {k: v + 1 if v.is_floating_point() else v for k, v in weights[2].items()}
    torch.save(weights[2], paths[2])
    assert am.load_model(f"robustbench:{case.name}", model_dir=tmp_path).armetrics_info.sha256 != sha


def _old_timm_swin(state):
    """A Swin state_dict as older timm saved it (RobustBench's ImageNet Swin files):
    stage ``i``'s downsample under ``layers.{i-1}``, the classifier as ``head.``."""
    import re

    return {re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
            .replace("head.fc.", "head."): v for k, v in state.items()}


@pytest.mark.parametrize("saved", ["distributed", "distributed, older timm", "wrapper's own"])
def test_imagenet_swin_part_loads_from_each_layout(saved):
    """MixedNUTS's ImageNet robust part is a ``normalize_model``-wrapped Swin: its file is
    the bare Swin (what robustbench filters, then prefixes with ``model.``), perhaps in
    older timm's key names; a file saved from the wrapper holds ``model.*`` beside
    ``normalize.*``. Each loads to the same logits (regression: the wrapper's file sent
    ``model.``-prefixed keys into timm's filter, an AttributeError)."""
    rbm.import_robustbench()
    from robustbench.model_zoo.architectures.utils_architectures import normalize_model
    from timm.models.swin_transformer import SwinTransformer

    def make():
        net = SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1),
                              num_heads=(1, 2), num_classes=10)
        return normalize_model(net, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).eval()

    torch.manual_seed(0)
    src = make()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    state = {"distributed": src.model.state_dict(), "wrapper's own": src.state_dict(),
             "distributed, older timm": _old_timm_swin(src.model.state_dict())}[saved]
    torch.manual_seed(1)
    dst = make()
    rbm._fit(dst, dict(state), "Bai2024MixedNUTS", "imagenet", "m1.pt")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))
