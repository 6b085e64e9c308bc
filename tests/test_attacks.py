"""PGD (armetrics.attacks) against analytic worst cases of linear classifiers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from armetrics.attacks import pgd, project, random_start


def linear_binary(d: int = 48, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A 2-class linear classifier on 3x4x4 inputs; returns (model, w1 - w0)."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, 2)).eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.randn(2, d, generator=g))
        net[1].bias.copy_(torch.randn(2, generator=g))
    return net, (net[1].weight[1] - net[1].weight[0]).detach()


def interior_batch(n: int, eps: float, seed: int = 1) -> torch.Tensor:
    """Images in [eps, 1 - eps], so the [0, 1] clamp never binds at radius eps (Linf)."""
    g = torch.Generator().manual_seed(seed)
    return eps + (1 - 2 * eps) * torch.rand(n, 3, 4, 4, generator=g)


def test_project_and_pgd_stay_in_ball_and_box():
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)).eval()
    x = torch.rand(16, 3, 4, 4, generator=g)
    x[:4] = x[:4].round()  # pixels at 0 and 1, where the clamp binds
    y = torch.randint(0, 5, (16,), generator=g)
    eps = torch.rand(16, generator=g) * 0.5 + 0.01  # one radius per sample
    for norm, dist in (("Linf", lambda t: t.flatten(1).abs().amax(1)), ("L2", lambda t: t.flatten(1).norm(dim=1))):
        delta = torch.randn(16, 3, 4, 4, generator=g) * 3
        p = project(delta, eps, norm)
        assert (dist(p) <= eps * (1 + 1e-6)).all()
        inside = p * 0.5
        assert torch.allclose(project(inside, eps, norm), inside)  # points of the ball do not move
        assert torch.allclose(project(p, eps, norm), p, atol=1e-7)  # idempotent
        for init in (True, False):
            xa = pgd(net, x, y, eps, norm=norm, steps=5, random_init=init, generator=torch.Generator().manual_seed(1))
            assert (dist(xa - x) <= eps * (1 + 1e-5)).all()
            assert xa.min() >= 0 and xa.max() <= 1


def test_linf_pgd_reaches_the_analytic_worst_case_of_a_linear_binary_classifier():
    """For z = Wx + b the cross-entropy of label y grows as the margin
    (w_y - w_other)^T (x + delta) shrinks: the Linf worst case is delta = -eps*sign(w_y - w_other)."""
    net, dw = linear_binary()
    eps = 8 / 255
    x = interior_batch(32, eps)
    y = torch.arange(32) % 2
    sign_y = (2 * y - 1).float()[:, None]  # w_y - w_other = sign_y * dw
    worst = x - eps * (sign_y * dw.sign()).view(32, 3, 4, 4)
    xa = pgd(net, x, y, eps, norm="Linf", steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(xa, worst, atol=1e-6)
    with torch.no_grad():
        best = F.cross_entropy(net(worst), y, reduction="none")
        got = F.cross_entropy(net(xa), y, reduction="none")
        margin = sign_y[:, 0] * (net(x)[:, 1] - net(x)[:, 0])
    assert torch.allclose(got, best, atol=1e-5)
    # the margin drops by exactly eps * ||w1 - w0||_1 (the dual norm)
    adv_margin = sign_y[:, 0] * (net(xa)[:, 1] - net(xa)[:, 0])
    assert torch.allclose(margin - adv_margin, eps * dw.abs().sum().expand(32), rtol=1e-5)


def test_l2_pgd_finds_the_analytic_worst_case_of_a_linear_binary_classifier():
    net, dw = linear_binary(seed=3)
    eps = 0.5
    x = interior_batch(8, 0.2)
    y = torch.arange(8) % 2
    sign_y = (2 * y - 1).float()[:, None]
    worst = x - eps * (sign_y * dw / dw.norm()).view(8, 3, 4, 4)
    xa = pgd(net, x, y, eps, norm="L2", steps=4, random_init=False)  # 4 steps of 2.5*eps/4 reach the sphere
    assert torch.allclose(xa, worst, atol=1e-5)
    # from a random start the off-gradient part shrinks at every projection
    xr = pgd(net, x, y, eps, norm="L2", steps=30, step_size=eps, generator=torch.Generator().manual_seed(0))
    cos = F.cosine_similarity((xr - x).flatten(1), (worst - x).flatten(1))
    assert (cos > 0.999).all()


def test_per_sample_eps_is_used_per_sample():
    net, dw = linear_binary()
    eps = torch.linspace(0.01, 0.1, 8)
    x = interior_batch(8, 0.1)
    y = torch.zeros(8, dtype=torch.long)
    xa = pgd(net, x, y, eps, norm="Linf", steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose((xa - x).flatten(1).abs().amax(1), eps, rtol=1e-5)


def test_pgd_is_deterministic_and_per_sample_generators_ignore_batching():
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for norm in ("Linf", "L2"):
        a = pgd(net, x, y, 0.1, norm=norm, steps=3, generator=torch.Generator().manual_seed(5))
        b = pgd(net, x, y, 0.1, norm=norm, steps=3, generator=torch.Generator().manual_seed(5))
        c = pgd(net, x, y, 0.1, norm=norm, steps=3, generator=torch.Generator().manual_seed(6))
        assert torch.equal(a, b) and not torch.equal(a, c)
        gens = lambda idx: [torch.Generator().manual_seed(100 + i) for i in idx]  # noqa: E731
        whole = pgd(net, x, y, 0.1, norm=norm, steps=0, generator=gens(range(6)))
        part = pgd(net, x[3:], y[3:], 0.1, norm=norm, steps=0, generator=gens(range(3, 6)))
        assert torch.equal(whole[3:], part)


def test_l2_random_start_is_uniform_in_the_ball():
    """In d = 2 a uniform point of the disc has E||delta|| = 2/3 eps and P(||delta|| < eps/2) = 1/4."""
    x = torch.zeros(20000, 2)
    for gen in (torch.Generator().manual_seed(0), [torch.Generator().manual_seed(i) for i in range(20000)]):
        r = random_start(x, 0.3, "L2", gen).norm(dim=1)
        assert r.max() <= 0.3 + 1e-7
        assert abs(r.mean().item() - 0.2) < 0.003
        assert abs((r < 0.15).float().mean().item() - 0.25) < 0.015


def test_pgd_init_and_no_parameter_gradients():
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))  # parameters require grad, as user modules do
    x = interior_batch(4, 0.1)
    init = torch.full_like(x, 0.05)
    xa = pgd(net, x, torch.zeros(4, dtype=torch.long), 0.03, norm="Linf", steps=0, init=init)
    assert torch.allclose(xa - x, torch.full_like(x, 0.03))  # the init is projected onto the ball
    pgd(net, x, torch.zeros(4, dtype=torch.long), 0.03, norm="L2", steps=3)
    assert all(p.grad is None for p in net.parameters())


# ----- early exit (issue 20): a sample leaves the working set at its first misclassified iterate
def _wrong(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return out.argmax(dim=1) != y


def _batch_sizes(net: nn.Module):
    """A list that a forward pre-hook fills with the batch size of every call of ``net``."""
    sizes: list[int] = []
    handle = net.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    return sizes, handle


def _gens(idx, base: int = 100):
    return [torch.Generator().manual_seed(base + int(i)) for i in idx]


def test_early_exit_equals_the_full_run_on_a_linear_binary_classifier():
    """Linf PGD on a binary linear model moves every coordinate monotonically against the
    margin, so a sample misclassified at some iterate is misclassified at the last one:
    stopping it there breaks exactly the samples the full run breaks."""
    net, _ = linear_binary(seed=3)
    eps, n = 0.1, 64
    x = interior_batch(n, eps, seed=4)
    with torch.no_grad():
        y = net(x).argmax(1)
    full = pgd(net, x, y, eps, norm="Linf", steps=10, generator=_gens(range(n)))
    sizes, handle = _batch_sizes(net)
    early = pgd(net, x, y, eps, norm="Linf", steps=10, generator=_gens(range(n)), stop=_wrong)
    handle.remove()
    with torch.no_grad():
        broken_full, broken_early = _wrong(net(full), y), _wrong(net(early), y)
    assert torch.equal(broken_full, broken_early) and 0 < int(broken_full.sum()) < n
    assert torch.allclose(early[~broken_early], full[~broken_full], atol=1e-6)  # never stopped: the same path
    assert (early - x).abs().amax() <= eps + 1e-6 and early.min() >= 0 and early.max() <= 1
    # the working set shrinks: later steps run only on the samples still correct
    assert sizes[0] == n and all(a >= b for a, b in zip(sizes, sizes[1:])) and sizes[-1] < n
    assert sum(sizes) < 10 * n


def test_early_exit_only_adds_broken_samples_and_keeps_unstopped_paths():
    """On a ReLU net a final point can drift back to the right class: early exit keeps the
    first misclassified iterate, so it breaks every sample the full run breaks (a sample
    it never stops follows the same path to the same last point), and maybe more."""
    g = torch.Generator().manual_seed(7)
    with torch.random.fork_rng():  # the same weights whatever ran before
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.rand(48, 3, 4, 4, generator=g)
    with torch.no_grad():
        y = net(x).argmax(1)
    for norm, eps in (("Linf", 0.05), ("L2", 0.4)):
        full = pgd(net, x, y, eps, norm=norm, steps=8, generator=_gens(range(48)))
        early = pgd(net, x, y, eps, norm=norm, steps=8, generator=_gens(range(48)), stop=_wrong)
        with torch.no_grad():
            broken_full, broken_early = _wrong(net(full), y), _wrong(net(early), y)
        assert bool((broken_early | ~broken_full).all())  # full-run broken => early broken
        moved = (early - full).flatten(1).abs().amax(1) > 1e-6  # the samples that stopped early
        assert bool(broken_early[moved].all())  # a stopped sample keeps a misclassified point
        assert 0 < int(broken_early.sum()) < 48


def test_early_exit_never_firing_is_the_plain_run_and_each_sample_ignores_its_batch():
    with torch.random.fork_rng():  # the same weights whatever ran before
        torch.manual_seed(1)
        net = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.rand(12, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2] * 4)
    never = lambda out, t: torch.zeros(out.shape[0], dtype=torch.bool)  # noqa: E731
    for norm, eps in (("Linf", 0.1), ("L2", 0.5)):
        plain = pgd(net, x, y, eps, norm=norm, steps=5, generator=_gens(range(12)))
        sizes, handle = _batch_sizes(net)
        kept = pgd(net, x, y, eps, norm=norm, steps=5, generator=_gens(range(12)), stop=never)
        handle.remove()
        assert torch.equal(plain, kept) and sizes == [12] * 5
        whole = pgd(net, x, y, eps, norm=norm, steps=5, generator=_gens(range(12)), stop=_wrong)
        order = torch.tensor([7, 2, 11, 4, 0])  # another batch: other samples, another order
        part = pgd(net, x[order], y[order], eps, norm=norm, steps=5, generator=_gens(order.tolist()), stop=_wrong)
        assert torch.allclose(part, whole[order], atol=1e-6)
