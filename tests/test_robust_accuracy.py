"""``robust_accuracy`` against exact robust accuracies of linear classifiers, and on a
small model trained adversarially in a fixture vs the same model trained normally."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from armetrics.attacks import pgd
from armetrics.errors import ConfigError
from armetrics.probe import Batch, Context
from armetrics.probes.robust_accuracy import RobustAccuracy, wilson_interval

SHAPE = (3, 8, 8)
D = 192


def run(probe: RobustAccuracy, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 16,
        start: int = 0, seed: int = 0) -> RobustAccuracy:
    """Drive a probe as the engine does (no_grad, one Batch per batch with its offset)."""
    probe.setup(Context(model=model, device=torch.device("cpu"), seed=seed, input_shape=tuple(x.shape[1:])))
    with torch.no_grad():
        for lo in range(0, len(x), batch_size):
            xb, yb = x[lo:lo + batch_size], y[lo:lo + batch_size]
            probe.update(Batch(x=xb, y=yb, logits=model(xb), features={}, model=model, offset=start + lo, seed=seed))
    return probe


def linear_model(k: int, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(D, k)).eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.randn(k, D, generator=g) * 0.1)
        net[1].bias.copy_(torch.randn(k, generator=g) * 0.1)
    return net


def certified_margin(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact worst-case Linf margin of a linear classifier: min_j (z_y - z_j) - eps ||w_y - w_j||_1
    (exact when x +- eps stays in [0, 1], so the box never binds). > 0 <=> robust."""
    w = net[1].weight.detach()
    with torch.no_grad():
        z = net(x)
    m = (z.gather(1, y[:, None]) - z) - eps * (w[y][:, None, :] - w[None]).abs().sum(-1)
    m[torch.arange(len(y)), y] = math.inf
    return m.min(1).values


def interior(n: int, eps: float, seed: int = 1) -> torch.Tensor:
    return eps + (1 - 2 * eps) * torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def test_pgd_is_exact_on_a_binary_linear_classifier():
    eps = 4 / 255
    net, x = linear_model(2), interior(96, 4 / 255)
    y = torch.randint(0, 2, (96,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        clean = net(x).argmax(1) == y
    truth = (clean & (certified_margin(net, x, y, eps) > 0)).sum().item()
    summary = run(RobustAccuracy(eps=eps), net, x, y).compute().summary
    assert summary["robust"] == truth and 0 < truth < clean.sum()
    assert summary["robust_accuracy"] == truth / 96 and summary["accuracy"] == clean.sum().item() / 96
    assert summary["n"] == 96 and summary["eps"] == eps
    lo, hi = wilson_interval(truth, 96)
    assert summary["robust_accuracy_ci_low"] == lo < truth / 96 < hi == summary["robust_accuracy_ci_high"]


def test_attacks_never_beat_the_certificate_and_merge_exactly():
    """Multi-class: no attack can break a certified sample, so PGD's count >= the exact one."""
    eps = 4 / 255
    net, x = linear_model(5, seed=3), interior(64, eps, seed=4)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[::4] = (y[::4] + 1) % 5  # some samples misclassified: never attacked, never robust
    exact = ((certified_margin(net, x, y, eps) > 0) & (torch.arange(64) % 4 != 0)).sum().item()
    whole = run(RobustAccuracy(eps=eps, restarts=2), net, x, y)
    assert exact <= whole.robust <= whole.correct == 48
    a = run(RobustAccuracy(eps=eps, restarts=2), net, x[:32], y[:32])
    b = run(RobustAccuracy(eps=eps, restarts=2), net, x[32:], y[32:], start=32)
    shard = RobustAccuracy(**b.config)
    for key, value in pickle.loads(pickle.dumps(b.state_dict())).items():
        setattr(shard, key, value)
    assert a.merge(shard).compute().summary == whole.compute().summary
    zero = run(RobustAccuracy(eps=0.0), net, x, y).compute().summary
    assert zero["robust_accuracy"] == zero["accuracy"] == 0.75


def test_autoattack_finds_the_exact_robust_accuracy_quietly_without_side_effects(capsys):
    """4 images of a 4-class linear model, 1 certified robust and 3 breakable (by a clear
    margin): the standard AutoAttack must break exactly the 3."""
    eps = 4 / 255
    net = linear_model(4)
    x = interior(64, eps)
    with torch.no_grad():
        y = net(x).argmax(1)
    m = certified_margin(net, x, y, eps)
    sel = torch.cat([(m > 0.05).nonzero().flatten()[:1], (m < -0.05).nonzero().flatten()[:3]])
    state = torch.get_rng_state()
    probe = run(RobustAccuracy(attack="autoattack", eps=eps), net, x[sel], y[sel])
    assert torch.equal(torch.get_rng_state(), state)  # AutoAttack's manual_seed did not leak
    summary = probe.compute().summary
    assert summary["correct"] == 4 and summary["robust"] == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    # the same breakable images again (cheap: Square never runs): same result
    again = run(RobustAccuracy(attack="autoattack", eps=eps), net, x[sel[1:]], y[sel[1:]]).compute().summary
    assert again["robust"] == 0
    with pytest.raises(ConfigError, match="at least 4 classes"):
        run(RobustAccuracy(attack="autoattack"), linear_model(3), x[:2], y[:2] % 3)


def _synthetic(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes on 3x8x8. A dense pattern of amplitude 0.02 per pixel (< 8/255) is
    almost noise-free — perfectly predictive but removable by an 8/255 Linf attack; a
    4-pixel feature of amplitude 0.12 is noisy (~90% predictive) but survives the attack."""
    y = torch.randint(0, 2, (n,), generator=g)
    s = (2 * y - 1).float().view(-1, 1, 1, 1)
    pattern = torch.sign(torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(123)))
    x = 0.5 + 0.02 * s * pattern + 0.01 * torch.randn(n, *SHAPE, generator=g)
    x[:, 0, 0, :4] = 0.5 + 0.12 * s[:, 0, 0] + 0.12 * torch.randn(n, 4, generator=g)
    return x.clamp(0, 1), y


def _train(x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 200) -> nn.Module:
    """Adam on an MLP; with eps > 0 Madry's PGD adversarial training (5 steps, eps ramped up)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for it in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        xb, yb = x[idx], y[idx]
        if eps:
            net.eval()
            xb = pgd(net, xb, yb, eps * min(1.0, 2 * it / steps), norm="Linf", steps=5, generator=g)
            net.train()
        loss = F.cross_entropy(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_adversarial_training_raises_pgd_robust_accuracy():
    g = torch.Generator().manual_seed(0)
    x, y = _synthetic(2000, g)
    xt, yt = _synthetic(256, g)
    results = {}
    for eps in (0.0, 8 / 255):
        net = _train(x, y, eps)
        results[eps] = run(RobustAccuracy(), net, xt, yt, batch_size=128).compute().summary
    std, adv = results[0.0], results[8 / 255]
    assert std["accuracy"] > 0.95 and adv["accuracy"] > 0.9
    assert adv["robust_accuracy"] > std["robust_accuracy"] + 0.4
    assert adv["robust_accuracy_ci_low"] > std["robust_accuracy_ci_high"]


def test_options():
    assert RobustAccuracy(norm="L2").radius == 0.5 and RobustAccuracy().radius == 8 / 255
    for bad in ({"eps": -1.0}, {"restarts": 0}, {"steps": -1}):
        with pytest.raises(ConfigError):
            RobustAccuracy(**bad)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    lo, hi = wilson_interval(8, 10)  # textbook value: (0.4902, 0.9433)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)


def _full_run_robust(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10) -> int:
    """Robust count of PGD without early exit (every sample all steps, the last point
    checked), the probe's per-sample starts: (run seed 0, sample index, restart 0)."""
    batch = Batch(x=x, y=y, logits=None, features={}, model=net, offset=0, seed=0)
    with torch.no_grad():
        ok = (net(x).argmax(1) == y).nonzero().flatten()
    gens = batch.sample_rngs("robust_accuracy/pgd/0", ok.tolist())
    xa = pgd(net, x[ok], y[ok], eps, norm="Linf", steps=steps, generator=gens)
    with torch.no_grad():
        return int((net(xa).argmax(1) == y[ok]).sum())


def test_pgd_early_exit_shrinks_the_work_and_keeps_results():
    """The probe's PGD stops each sample at its first misclassified iterate: on a binary
    linear model (where that point stays misclassified) the count equals running every
    sample for all steps; on 5 classes it can only break more (never below the
    certificate); later steps see fewer samples; the count ignores the batch size."""
    eps = 4 / 255
    net, x = linear_model(2), interior(96, eps)
    y = torch.randint(0, 2, (96,), generator=torch.Generator().manual_seed(2))
    sizes: list[int] = []
    handle = net.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        robust = run(RobustAccuracy(eps=eps), net, x, y, batch_size=96).robust
    finally:
        handle.remove()
    assert robust == _full_run_robust(net, x, y, eps)
    attack = sizes[1:-1]  # after the clean logits: the PGD steps, then the final check
    assert all(a >= b for a, b in zip(attack, attack[1:])) and attack[-1] < attack[0]
    assert len(attack) == 10 and sizes[-1] == attack[0] and sum(attack) < 10 * attack[0]
    net5, x5 = linear_model(5, seed=3), interior(64, eps, seed=4)
    with torch.no_grad():
        y5 = net5(x5).argmax(1)
    counts = {bs: run(RobustAccuracy(eps=eps), net5, x5, y5, batch_size=bs).robust for bs in (64, 7)}
    exact = int((certified_margin(net5, x5, y5, eps) > 0).sum())
    assert counts[64] == counts[7] and exact <= counts[64] <= _full_run_robust(net5, x5, y5, eps)
