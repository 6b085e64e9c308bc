"""Hand-written baselines for the smoothness and robust_accuracy benchmarks: plain
loops doing the same forward / JVP / VJP / PGD passes as the probes, with none of
their bookkeeping (per-sample generators, state, bootstrap, report)."""

import torch
import torch.nn.functional as F
from torch import nn


class Stop(Exception):
    pass

def hand_smoothness(m, data, K=4, ITERS=10, STEPS=10):
    names = [n for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    mods = dict(m.named_modules())
    out = []
    for x, _ in data.batches():
        d = x[0].numel(); r = 8 / 255 * d ** 0.5
        cap = {}
        hs = [mods[n].register_forward_hook(lambda mo, i, o, n=n: cap.__setitem__(n, o.clone())) for n in names]
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = m(xg)
        for h in hs: h.remove()
        h0 = {n: cap[n].detach().flatten(1) for n in names}
        # random directions: one forward each, per-sample norms in hooks
        for k in range(K):
            dev = {}
            hs = [mods[n].register_forward_hook(lambda mo, i, o, n=n: dev.__setitem__(n, (o.flatten(1) - h0[n]).norm(dim=1))) for n in names]
            g = torch.randn_like(x); g = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            with torch.no_grad():
                m(x + r * g)
            for h in hs: h.remove()
        # power iteration per row (the classifier row IS the logits: computed once, as the probe does)
        for n in names:
            h = cap[n]
            with torch.enable_grad():
                u = torch.zeros_like(h, requires_grad=True)
                (gg,) = torch.autograd.grad(h, xg, u, create_graph=True)
                q = torch.randn_like(x)
                for _ in range(ITERS):
                    q = q / q.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                    (jq,) = torch.autograd.grad(gg, u, q, retain_graph=True)
                    (q,) = torch.autograd.grad(h, xg, jq, retain_graph=True)
            out.append(jq.flatten(1).norm(dim=1))
        # PGD per row: truncated forward, L2 steps of 2.5 r / STEPS
        for n in names:
            def f(z):
                box = []
                def hook(mo, i, o):
                    box.append(o.clone()); raise Stop
                hh = mods[n].register_forward_hook(hook)
                try:
                    m(z)
                except Stop:
                    pass
                finally:
                    hh.remove()
                return box[0].flatten(1)
            delta = r * q / q.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            for _ in range(STEPS):
                delta.requires_grad_(True)
                with torch.enable_grad():
                    loss = (f(x + delta) - h0[n]).pow(2).sum()
                    (gr,) = torch.autograd.grad(loss, delta)
                with torch.no_grad():
                    delta = delta + 2.5 * r / STEPS * gr / gr.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                    delta = delta * torch.clamp(r / delta.flatten(1).norm(dim=1), max=1).view(-1, 1, 1, 1)
                delta = delta.detach()
            with torch.no_grad():
                out.append((f(x + delta) - h0[n]).norm(dim=1))
    return out

def hand_pgd(m, data):
    robust = 0
    for x, y in data.batches():
        with torch.no_grad():
            ok = m(x).argmax(1) == y
        x, y = x[ok], y[ok]
        eps = 8 / 255
        delta = (2 * torch.rand_like(x) - 1) * eps
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(10):
            delta.requires_grad_(True)
            with torch.enable_grad():
                (gr,) = torch.autograd.grad(F.cross_entropy(m(x + delta), y, reduction="sum"), delta)
            with torch.no_grad():
                delta = (delta + eps / 4 * gr.sign()).clamp(-eps, eps)
                delta = (x + delta).clamp(0, 1) - x
        with torch.no_grad():
            robust += int((m(x + delta).argmax(1) == y).sum())
    return robust



# ---------------------------------------------------------------------------------------------
# smoothness before issue 20: the worst-direction iteration as it was at commit d7006ae
# (double-backward J q, a random start per row, always `iters` products). Verbatim copies of
# armetrics.jacobian.top_singular_value / _orthogonalize and Smoothness._worst_ratios; the rest
# of the probe (random directions, PGD, statistics) did not change.
import math  # noqa: E402

from armetrics.errors import ProbeError, first_line  # noqa: E402
from armetrics.jacobian import PowerResult, _unit  # noqa: E402
from armetrics.probe import Batch  # noqa: E402
from armetrics.probes.smoothness import Smoothness  # noqa: E402
from armetrics.registry import register_probe  # noqa: E402


def _orthogonalize(z: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Remove from each z (B, d) its components along basis (B, j, d), twice (CGS2)."""
    for _ in range(2):
        coef = torch.einsum("bjd,bd->bj", basis, z)
        z = z - torch.einsum("bj,bjd->bd", coef, basis)
    return z


def _top_singular_value_before(x: torch.Tensor, h: torch.Tensor, v0: torch.Tensor, iters: int) -> PowerResult:
    """Top singular value of ``J = dh/dx`` per sample from ``iters`` products
    ``A q = J^T (J q)`` (one JVP and one VJP each), started at ``v0`` (shape of x).

    This is power iteration with its Krylov subspace kept: the vectors
    ``v0, A v0, ..., A^(iters-1) v0`` are orthonormalized (Lanczos with full
    reorthogonalization) and the estimate is the best one in their span
    (Rayleigh-Ritz: the top eigenvalue of ``Q^T A Q``). The plain power iterate lies in
    that span, so for the same products the estimate is never worse than power
    iteration's, and it is exact once ``iters`` reaches the rank of ``J`` (e.g. the
    number of classes for logits). Like any Rayleigh quotient it never exceeds the
    true value. When the subspace is exhausted the remaining vectors are zero.

    ``h`` must have been computed from ``x`` (``x.requires_grad``) with the graph kept;
    the graph is reused (``retain_graph``) and no parameter gets a gradient. Call
    under ``torch.enable_grad()``. Memory: two ``(B, iters, d)`` tensors.
    """
    b = x.shape[0]
    if not h.requires_grad:  # h does not depend on x: J = 0
        zero = torch.zeros(b, dtype=x.dtype, device=x.device)
        return PowerResult(zero, zero, _unit(v0))
    u = torch.zeros_like(h, requires_grad=True)
    (g,) = torch.autograd.grad(h, x, u, create_graph=True)  # g = J^T u, linear in u

    def ata(q: torch.Tensor) -> torch.Tensor:  # J^T J q, per sample
        if not g.requires_grad:  # J^T u does not depend on u: J = 0
            return torch.zeros_like(q)
        (jq,) = torch.autograd.grad(g, u, q.view_as(x), retain_graph=True)  # J q (double backward)
        (jtjq,) = torch.autograd.grad(h, x, jq, retain_graph=True)  # J^T (J q)
        return jtjq.flatten(1)

    k = max(int(iters), 1)
    d = x[0].numel()
    basis = x.new_zeros(b, k, d)
    images = x.new_zeros(b, k, d)
    q = _unit(v0.detach().flatten(1))
    for j in range(k):
        basis[:, j] = q
        z = ata(q)
        images[:, j] = z
        if j == k - 1:
            break
        z = _orthogonalize(z, basis[:, : j + 1])
        beta = z.norm(dim=1, keepdim=True)
        alive = beta > 1e-5 * images[:, j].norm(dim=1, keepdim=True)  # else: subspace exhausted
        q = torch.where(alive, z / beta.clamp_min(1e-30), torch.zeros_like(z))
    gram = torch.einsum("bid,bjd->bij", basis.double(), images.double())
    gram = (gram + gram.transpose(1, 2)) / 2  # Q^T A Q
    bad = ~torch.isfinite(gram).all(dim=2).all(dim=1)  # non-finite weights or inputs: NaN, not a crash
    gram = torch.where(bad[:, None, None], torch.zeros_like(gram), gram)
    evals, evecs = torch.linalg.eigh(gram)
    evals = torch.where(bad[:, None], torch.full_like(evals, math.nan), evals)
    top = evals[:, -1].clamp_min(0)
    prev = torch.linalg.eigvalsh(gram[:, :-1, :-1])[:, -1].clamp_min(0) if k > 1 else top
    v = torch.einsum("bj,bjd->bd", evecs[:, :, -1].to(x.dtype), basis)
    return PowerResult(top.sqrt().to(x.dtype), prev.sqrt().to(x.dtype), _unit(v).view_as(x).detach())




@register_probe("smoothness_before")
class SmoothnessBefore(Smoothness):
    """``smoothness`` with the worst-direction iteration of commit d7006ae (the baseline)."""

    def _worst_ratios(self, xg: torch.Tensor, h: dict[str, torch.Tensor], x: torch.Tensor, batch: Batch,
                      pos: torch.Tensor, work: list[str], col: dict[str, int],
                      out: dict[str, torch.Tensor], calls=None) -> dict[str, torch.Tensor]:
        """Fill ``ratio_worst`` and ``ratio_worst_prev`` of the ``work`` rows in ``out``;
        returns each row's top right singular vector estimate (the PGD start)."""
        v_top: dict[str, torch.Tensor] = {}
        v0 = torch.stack([torch.randn(x.shape[1:], generator=gen, device=x.device, dtype=x.dtype)
                          for gen in batch.sample_rngs("smoothness/power", pos.tolist())])
        with torch.enable_grad():
            for r in work:
                try:
                    res = _top_singular_value_before(xg, h[r], v0, self.iters)
                except (RuntimeError, NotImplementedError) as exc:
                    raise ProbeError(f"smoothness: the Jacobian of {r!r} needs double backward, which this model "
                                     f"does not support ({first_line(exc, 160)}): use --set smoothness.iters=0") from None
                out["ratio_worst"][:, col[r]] = res.sigma.double().cpu()
                out["ratio_worst_prev"][:, col[r]] = res.sigma_prev.double().cpu()
                v_top[r] = res.v
        return v_top
