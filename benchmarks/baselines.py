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

