"""Forward-mode J v (armetrics.tangents) and the ratio_worst iteration built on it, against
dense Jacobians (torch.autograd.functional.jacobian) and the double-backward trick."""

import pytest
import torch
from torch import nn

from armetrics import tangents
from armetrics.jacobian import top_singular_value, truncated


def _net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2, padding=1, groups=2),
                        nn.SiLU(), nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():  # non-trivial running statistics
        net[1].running_mean.uniform_(-1, 1), net[1].running_var.uniform_(0.5, 2), net[1].weight.uniform_(0.5, 2)
    return net.eval().double()


def _dense(f, x):
    return torch.autograd.functional.jacobian(lambda z: f(z[None]).flatten(), x)  # (m, *x.shape)


@pytest.mark.parametrize("layer", ["0", "1", "3", "6"])
def test_jvp_equals_the_dense_jacobian_times_v(layer):
    net = _net()
    x, v = torch.rand(3, 3, 8, 8, dtype=torch.float64), torch.randn(3, 3, 8, 8, dtype=torch.float64)
    f = truncated(net, layer)
    got = tangents.jvp(f, x, v)
    for i in range(3):
        jac = _dense(f, x[i]).flatten(1)
        assert torch.allclose(got[i], jac @ v[i].flatten(), atol=1e-10, rtol=1e-9)


def test_cheap_rules_equal_torch_forward_mode_and_skip_what_they_do_not_cover():
    """The mode's conv/linear/batch_norm rules give torch's own forward-mode tangents; a conv
    with string padding, a training-mode batch_norm and dual weights fall through to torch."""
    import torch.autograd.forward_ad as fwAD
    conv = nn.Conv2d(3, 4, 3, padding="same").double()
    bn = nn.BatchNorm2d(4).double().train()
    x, v = torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for f in (_net(), nn.Sequential(conv, bn)):
        with fwAD.dual_level():
            want = fwAD.unpack_dual(f(fwAD.make_dual(x, v))).tangent.flatten(1)
        assert torch.allclose(tangents.jvp(f, x, v), want, atol=1e-12)
    lin = nn.Linear(5, 3).double()
    w_t = torch.randn_like(lin.weight)
    z, z_t = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    with fwAD.dual_level(), tangents.CheapTangents():  # a dual weight: torch's rule, both tangents
        out = torch.nn.functional.linear(fwAD.make_dual(z, z_t), fwAD.make_dual(lin.weight, w_t), lin.bias)
        got = fwAD.unpack_dual(out).tangent
    assert torch.allclose(got, z_t @ lin.weight.T + z @ w_t.T, atol=1e-12)


def test_forward_mode_iteration_equals_the_double_backward_one_and_the_dense_svd():
    net = _net(1)
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    v0 = torch.randn_like(x)
    for layer in ("3", "6"):
        f = truncated(net, layer)
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad():
            h = f(xg)
            fwd = top_singular_value(xg, h, v0, 30, jvp=lambda q: tangents.jvp(f, x, q), tol=0)
            dbl = top_singular_value(xg, h, v0, 30, tol=0)
        assert torch.allclose(fwd.sigma, dbl.sigma, rtol=1e-9)
        truth = torch.stack([torch.linalg.svdvals(_dense(f, x[i]).flatten(1))[0] for i in range(4)])
        assert torch.allclose(fwd.sigma, truth, rtol=1e-6)


def test_tol_stops_each_sample_on_its_own():
    """A sample's estimate does not depend on the other samples of the batch (each stops at
    its own residual), and a looser tol takes no more products than a tighter one."""
    net = _net(2)
    x = torch.rand(5, 3, 8, 8, dtype=torch.float64)
    v0 = torch.randn_like(x)
    f = truncated(net, "3")

    def sigma(xb, vb, tol):
        xg = xb.clone().requires_grad_(True)
        with torch.enable_grad():
            res = top_singular_value(xg, f(xg), vb, 20, jvp=lambda q: tangents.jvp(f, xb, q), tol=tol)
        return res.sigma
    whole = sigma(x, v0, 1e-2)
    alone = torch.cat([sigma(x[i:i + 1], v0[i:i + 1], 1e-2) for i in range(5)])
    assert torch.allclose(whole, alone, rtol=1e-10)
    counts = []
    for tol in (1e-1, 1e-2, 0):
        n = [0]

        def counted(q, n=n):
            n[0] += 1
            return tangents.jvp(f, x, q)
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad():
            top_singular_value(xg, f(xg), v0, 20, jvp=counted, tol=tol)
        counts.append(n[0])
    assert counts[0] <= counts[1] <= counts[2] == 20 and counts[0] < 20


def test_primal_cache_replays_the_same_tangents_across_depths_and_rejects_another_forward():
    """Passes at one x share a PrimalCache whatever their depth (deep first, then shallow,
    then deeper again); the tangents equal uncached ones; a pass whose calls see other
    shapes raises instead of replaying wrong values."""
    net = _net(3)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    cache = tangents.PrimalCache()
    for layer in ("3", "0", "6", "1", "6"):
        f = truncated(net, layer)
        v = torch.randn_like(x)
        assert torch.allclose(tangents.jvp(f, x, v, cache), tangents.jvp(f, x, v), atol=1e-12), layer
    assert len(cache.outputs) == 4  # conv, bn, conv, linear: recorded once each
    other = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="PrimalCache"):
        tangents.jvp(truncated(net, "0"), other, torch.randn_like(other), cache)
