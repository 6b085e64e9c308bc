"""The ``smoothness`` probe against ground truth: analytic linear maps, dense Jacobian
SVDs (torch.autograd.functional.jacobian), independent Monte Carlo estimates."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import armetrics as am
from armetrics.errors import ConfigError
from armetrics.probe import Batch, Context
from armetrics.probes.smoothness import Smoothness, default_radius

SHAPE = (3, 4, 4)
D = 48


def linear_net() -> nn.Module:
    """h1 = W1 x + b1 (12 features), logits = W2 h1 + b2 (5 classes): every layer linear."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(D, 12), nn.Linear(12, 5)).eval()
    with torch.no_grad():
        for m in (net[1], net[2]):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(m.weight.shape[1]))
            m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return net


class ReluNet(nn.Module):
    """conv (followed by an IN-PLACE ReLU) - bn - maxpool - linear - relu - linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16, 10)
        self.fc2 = nn.Linear(10, 6)

    def forward(self, x):
        h = self.pool(self.bn(self.relu(self.conv(x))))
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))


def relu_net() -> nn.Module:
    torch.manual_seed(0)
    net = ReluNet().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def run(probe: Smoothness, model: nn.Module, x: torch.Tensor, batch_size: int = 8, start: int = 0, seed: int = 0) -> Smoothness:
    """Drive a probe as the engine does (no_grad, one Batch per batch with its offset)."""
    probe.setup(Context(model=model, device=torch.device("cpu"), seed=seed, input_shape=tuple(x.shape[1:])))
    with torch.no_grad():
        for lo in range(0, len(x), batch_size):
            xb = x[lo:lo + batch_size]
            logits = model(xb)
            probe.update(Batch(x=xb, y=logits.argmax(1), logits=logits, features={}, model=model,
                               offset=start + lo, seed=seed))
    return probe


def rows_by_name(result) -> dict:
    return {row["name"]: row for row in result.layers}


def layer_jacobian(model: nn.Module, name: str, x1: torch.Tensor) -> torch.Tensor:
    """Dense Jacobian (out_dim, in_dim) of module ``name``'s output (or the logits for
    "logits") at one sample, by torch.autograd.functional.jacobian — ground truth."""
    def f(z):
        box = {}
        if name == "logits":
            return model(z).flatten()
        handle = model.get_submodule(name).register_forward_hook(lambda m, i, o: box.__setitem__("o", o.clone()))
        try:
            model(z)
        finally:
            handle.remove()
        return box["o"].flatten()
    return torch.autograd.functional.jacobian(f, x1).reshape(-1, x1.numel())


def mc_random_ratio(jac: torch.Tensor, draws: int = 200_000, seed: int = 7) -> float:
    """E ||J g|| / ||g|| over isotropic Gaussian g, by plain Monte Carlo in numpy."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((draws, jac.shape[1]))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return float(np.linalg.norm(g @ jac.double().numpy().T, axis=1).mean())


def test_linear_network_ratios_are_exact(tmp_path):
    net = linear_net()
    w1 = net[1].weight.detach().double()
    w21 = (net[2].weight.detach() @ net[1].weight.detach()).double()
    x = images(64)
    report = am.analyze(net, _npz_data(x, tmp_path), ["smoothness"], options={"smoothness": {
        "iters": 12, "directions": 6, "pgd_steps": 5, "bootstrap": 400}})
    rows = {row["name"]: row for row in report.layers("smoothness")}
    summary = report.summary("smoothness")
    assert list(rows) == ["1", "2", "logits"]
    for name, w in (("1", w1), ("2", w21), ("logits", w21)):
        row = rows[name]
        smax = torch.linalg.svdvals(w)[0].item()
        # worst direction: sigma_max exactly (rank W <= 12 = iters: the Krylov space is exhaustive)
        assert row["ratio_worst"] == pytest.approx(smax, rel=1e-4)
        assert row["ratio_worst_ci_low"] == pytest.approx(smax, rel=1e-4)
        assert row["ratio_pgd"] == pytest.approx(smax, rel=1e-4)
        # random directions: an independent Monte Carlo estimate of E||W g||/||g|| lies in the CI,
        # and is close to sqrt(trace(W^T W) / d)
        truth = mc_random_ratio(w)
        assert row["ratio_random_ci_low"] <= truth <= row["ratio_random_ci_high"]
        assert row["ratio_random"] == pytest.approx(truth, rel=0.03)
        assert truth == pytest.approx(math.sqrt((w ** 2).sum().item() / D), rel=0.1)
        assert row["anisotropy_ci_low"] <= smax / truth <= row["anisotropy_ci_high"]
        # rel_ratio = ratio / (||h(x)|| / ||x||), averaged per sample
        h = (x.flatten(1).double() @ (w1 if name == "1" else w21).T) + _bias(net, name)
        scale = (x.flatten(1).double().norm(dim=1) / h.norm(dim=1)).mean().item()
        assert row["rel_ratio_worst"] == pytest.approx(smax * scale, rel=1e-4)
        assert row["power_rel_change"] < 5e-3  # stopped by the default tol (1e-2 on sigma^2) or an exhausted space
    assert rows["2"]["type"] == "Linear" and rows["logits"]["type"] == "logits" and rows["2"]["dim"] == 5
    # medians over the module rows "1" and "2"
    assert summary["ratio_worst_median"] == pytest.approx((rows["1"]["ratio_worst"] + rows["2"]["ratio_worst"]) / 2, rel=1e-9)
    assert summary["logit_ratio_worst"] == rows["logits"]["ratio_worst"]
    assert summary["logit_ratio_worst_ci_low"] <= summary["logit_ratio_worst"] <= summary["logit_ratio_worst_ci_high"]
    assert summary["n"] == 64 and summary["radius"] == pytest.approx(8 / 255 * math.sqrt(D))


def _bias(net, name) -> torch.Tensor:
    b1 = net[1].bias.detach().double()
    return b1 if name == "1" else net[2].weight.detach().double() @ b1 + net[2].bias.detach().double()


def _npz_data(x: torch.Tensor, tmp_path):
    """A data source of float NCHW images in [0, 1] (labels are irrelevant here)."""
    path = tmp_path / "x.npz"
    np.savez(path, x=x.numpy().astype(np.float32), y=np.arange(len(x)) % 5)
    return am.load_data(str(path), batch_size=16, seed=None)


def test_radius_zero_is_the_derivative_and_equals_finite_differences_on_a_linear_map():
    net, x = linear_net(), images(16)
    fd = run(Smoothness(radius=1.0, iters=0, pgd_steps=0, bootstrap=0), net, x).compute()
    dd = run(Smoothness(radius=0.0, iters=0, pgd_steps=0, bootstrap=0), net, x).compute()
    for a, b in zip(fd.layers, dd.layers):
        assert a["ratio_random"] == pytest.approx(b["ratio_random"], rel=1e-5)
        assert math.isnan(b["ratio_pgd"]) and math.isnan(b["ratio_worst"])


def test_relu_net_power_iteration_equals_dense_jacobian_svd():
    """Per sample and layer: sigma_max of the dense Jacobian of that module's OWN output
    (the conv is followed by an in-place ReLU, which must not leak into its row)."""
    net, x = relu_net(), images(6)
    exact = run(Smoothness(iters=25, tol=0, directions=0, pgd_steps=0, bootstrap=0), net, x, batch_size=3)
    default = run(Smoothness(directions=0, pgd_steps=0, bootstrap=0), net, x, batch_size=3)  # iters 10, tol 1e-2
    rows = rows_by_name(exact.compute())
    assert list(rows) == ["conv", "fc1", "fc2", "logits"]
    data = torch.cat([c["ratio_worst"] for c in exact.chunks])  # (n, rows), per sample
    fast = torch.cat([c["ratio_worst"] for c in default.chunks])
    for j, name in enumerate(rows):
        truth = torch.tensor([torch.linalg.svdvals(layer_jacobian(net, name, x[i:i + 1]))[0].item() for i in range(6)])
        assert torch.allclose(data[:, j].float(), truth, rtol=1e-3), name
        assert rows[name]["ratio_worst"] == pytest.approx(truth.double().mean().item(), rel=1e-3)
        # the default stops at a Ritz residual of 1e-2: a lower bound within 0.5% of sigma_max
        assert ((fast[:, j].float() <= truth * (1 + 1e-5)) & (fast[:, j].float() >= truth * (1 - 5e-3))).all(), name


def test_relu_net_small_radius_pgd_and_random_directions_match_the_jacobian():
    net, x = relu_net(), images(6, seed=2)
    # radius 1e-4: no ReLU/maxpool switches, so the finite change is the linear one
    res = rows_by_name(run(Smoothness(radius=1e-4, iters=25, directions=0, pgd_steps=3, bootstrap=0), net, x).compute())
    rand = rows_by_name(run(Smoothness(radius=0.0, iters=0, directions=32, pgd_steps=0, bootstrap=300), net, x).compute())
    for name in ("conv", "fc1", "logits"):
        jacs = [layer_jacobian(net, name, x[i:i + 1]) for i in range(6)]
        smax = np.mean([torch.linalg.svdvals(j)[0].item() for j in jacs])
        assert res[name]["ratio_pgd"] == pytest.approx(smax, rel=2e-3)
        truth = np.mean([mc_random_ratio(j, draws=20_000) for j in jacs])
        assert rand[name]["ratio_random_ci_low"] <= truth <= rand[name]["ratio_random_ci_high"], name
        assert rand[name]["ratio_random"] == pytest.approx(truth, rel=0.05)


def test_two_merged_halves_equal_one_run_in_any_order():
    net, x = relu_net(), images(24, seed=3)
    opts = dict(iters=4, directions=2, pgd_steps=2, bootstrap=200)
    whole = run(Smoothness(**opts), net, x, batch_size=4).compute()
    for first, second in ((slice(0, 12), slice(12, 24)), (slice(12, 24), slice(0, 12))):
        a = run(Smoothness(**opts), net, x[first], batch_size=4, start=first.start)
        b = run(Smoothness(**opts), net, x[second], batch_size=4, start=second.start)
        shard = type(a)(**a.config)  # as the engine folds a gathered shard: fresh probe + pickled state
        for key, value in pickle.loads(pickle.dumps(b.state_dict())).items():
            setattr(shard, key, value)
        merged = a.merge(shard).compute()
        assert merged.summary == whole.summary
        assert merged.layers == whole.layers


def test_max_samples_and_determinism():
    net, x = relu_net(), images(20, seed=4)
    opts = dict(iters=3, directions=2, pgd_steps=1, bootstrap=100, max_samples=10)
    a = run(Smoothness(**opts), net, x, batch_size=8).compute()
    b = run(Smoothness(**opts), net, x, batch_size=4).compute()  # other batching, same samples
    c = run(Smoothness(**opts), net, x[:10], batch_size=10).compute()
    assert a.summary["n"] == 10
    for other in (b, c):
        for ra, rb in zip(a.layers, other.layers):
            for k, v in ra.items():
                if isinstance(v, float) and "ci" not in k:
                    assert v == pytest.approx(rb[k], rel=1e-5, nan_ok=True), k
    assert run(Smoothness(**opts), net, x, batch_size=8).compute().summary == a.summary


def test_options_and_errors():
    net = relu_net()
    probe = Smoothness(layers="fc*")
    probe.setup(Context(model=net, device=torch.device("cpu")))
    assert probe.rows == ["fc1", "fc2", "logits"]
    with pytest.raises(ConfigError, match="match(es)? no module"):
        Smoothness(layers="features.*").setup(Context(model=net, device=torch.device("cpu")))
    for bad in ({"iters": -1}, {"radius": -1.0}, {"max_samples": 0}):
        with pytest.raises(ConfigError):
            Smoothness(**bad)
    assert default_radius(3 * 32 * 32) == pytest.approx(8 / 255 * math.sqrt(3072))
    empty = Smoothness()
    empty.setup(Context(model=net, device=torch.device("cpu")))
    assert empty.compute().summary["n"] == 0


def test_user_modules_get_no_parameter_gradients_and_report_keys(tmp_path):
    net = ReluNet().train(False)  # parameters require grad
    report = am.analyze(net, _npz_data(images(8), tmp_path), ["smoothness"],
                        options={"smoothness": {"iters": 2, "directions": 1, "pgd_steps": 1, "bootstrap": 50}})
    assert all(p.grad is None for p in net.parameters())
    summary = report.summary("smoothness")
    for key in ("ratio_random_median", "ratio_worst_median", "anisotropy_median", "logit_ratio_worst",
                "logit_ratio_worst_ci_low", "logit_ratio_worst_ci_high"):
        assert math.isfinite(summary[key]), key
    for row in report.layers("smoothness"):
        for key in ("name", "ratio_random", "ratio_worst", "anisotropy", "rel_ratio_random", "rel_ratio_worst",
                    "ratio_worst_ci_low", "ratio_worst_ci_high"):
            assert key in row


class AttentionNet(nn.Module):
    """Patches of the image as 16 tokens -> one self-attention through
    F.scaled_dot_product_attention (the fused kernel timm's ViT/DeiT/XCiT use, which has
    no double backward) -> mean over tokens -> 5 logits."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.qkv = nn.Linear(8, 24)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        t = self.embed(x.flatten(2).transpose(1, 2))          # (B, 16, 8)
        q, k, v = self.qkv(t).view(len(x), 16, 3, 2, 4).permute(2, 0, 3, 1, 4)  # 2 heads of 4
        a = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(len(x), 16, 8)
        return self.head(a.mean(1))


def test_attention_model_jacobians_need_no_double_backward_kernel(tmp_path):
    """A model using fused attention: the probe (its own pass and the engine's shared one)
    gives the dense Jacobian's sigma_max per sample (the fused kernel's missing double
    backward once failed this with 'needs double backward')."""
    torch.manual_seed(0)
    net, x = AttentionNet().eval(), images(4, seed=3)
    with pytest.raises(RuntimeError, match="not implemented"):  # the fused kernel really lacks it
        xg = x[:1].clone().requires_grad_()
        (g,) = torch.autograd.grad(net(xg).square().sum(), xg, create_graph=True)
        torch.autograd.grad(g.sum(), xg)
    truth = torch.tensor([torch.linalg.svdvals(layer_jacobian(net, "logits", x[i:i + 1]))[0].item() for i in range(4)])
    probe = run(Smoothness(layers="logits", iters=25, directions=0, pgd_steps=0, bootstrap=0), net, x, batch_size=2)
    assert torch.allclose(torch.cat([c["ratio_worst"] for c in probe.chunks])[:, 0].float(), truth, rtol=1e-3)
    path = tmp_path / "x.npz"
    np.savez(path, x=(x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8), y=np.zeros(4, dtype=np.int64))
    xq = torch.from_numpy(np.load(path)["x"]).permute(0, 3, 1, 2).float() / 255
    truth = np.mean([torch.linalg.svdvals(layer_jacobian(net, "logits", xq[i:i + 1]))[0].item() for i in range(4)])
    r = am.analyze(net, am.load_data(path, batch_size=2), ["smoothness"],
                   options={"smoothness": {"layers": "logits", "iters": 25, "directions": 0, "pgd_steps": 0,
                                           "bootstrap": 0}})
    assert r.layers("smoothness")[0]["ratio_worst"] == pytest.approx(truth, rel=1e-3)


class _OnceTanh(torch.autograd.Function):
    """tanh with a backward that cannot be differentiated and no forward-mode rule, as in
    models with hand-written adjoint solvers (RobustBench's Kang2021Stable)."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class OnceNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.fc1, self.fc2 = nn.Linear(D, 20), nn.Linear(20, 7)

    def forward(self, x):
        return self.fc2(_OnceTanh.apply(self.fc1(x.flatten(1))))


def test_worst_ratio_without_jvp_or_double_backward_is_exact_from_the_formed_jacobian():
    """Neither forward mode nor double backward reach past the custom op: rows of few
    outputs (fc2, logits) get sigma_max from their Jacobian formed row by row; it equals
    the SVD of the dense Jacobian per sample. fc1 (before the op) keeps forward mode."""
    net = OnceNet().eval()
    x = images(6)
    with pytest.raises(RuntimeError):  # the premise: no forward-mode rule
        torch.func.jvp(net, (x,), (x,))
    probe = run(Smoothness(radius=0.5, iters=20, tol=0.0, pgd_steps=0, bootstrap=0), net, x)
    rows = rows_by_name(probe.compute())
    per_sample = torch.cat([c["ratio_worst"] for c in probe.chunks])  # (N, rows) in sample order
    names = list(probe.rows)
    for name in ("fc1", "fc2", "logits"):
        truth = [torch.linalg.svdvals(layer_jacobian(net, name, x[i:i + 1]))[0].item() for i in range(len(x))]
        got = per_sample[:, names.index(name)].tolist()
        assert got == pytest.approx(truth, rel=1e-5), name
        assert rows[name]["ratio_worst"] == pytest.approx(float(np.mean(truth)), rel=1e-5)


def test_formed_jacobian_of_a_non_finite_sample_is_nan_and_the_others_exact():
    """A sample whose Jacobian holds inf/NaN gives NaN (no crash in eigh); the rest are unaffected."""
    from armetrics.jacobian import top_singular_value_by_rows

    w = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    xg = torch.randn(2, 5, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    h = (xg @ w.T) * torch.tensor([[1.0], [math.inf]])  # sample 1: J = inf * W
    res = top_singular_value_by_rows(xg, h)
    assert math.isnan(res.sigma[1].item())
    assert res.sigma[0].item() == pytest.approx(torch.linalg.svdvals(w)[0].item(), rel=1e-6)
