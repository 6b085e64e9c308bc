"""``smoothness``: how much each layer's features change per unit change of the input.

For a layer output ``h`` (flattened per sample), an input ``x`` (B samples of
dimension d) and a perturbation ``delta``, the *ratio* is

    r(x, delta) = ||h(x + delta) - h(x)||_2 / ||delta||_2      (feature units per input unit)

measured along three kinds of directions, per sample, then averaged over samples:

- ``ratio_random``: ``delta = radius * g/||g||``, g ~ N(0, I_d) isotropic, averaged
  over ``directions`` draws (radius 0: the derivative ``||J g||/||g||`` instead);
- ``ratio_worst``: the top singular value ``sigma_max(J)`` of the layer's Jacobian
  ``J = dh/dx`` at x, by power iteration on ``J^T J`` with its Krylov space kept
  (:func:`armetrics.jacobian.top_singular_value`: ``||J v||`` for the best unit v of
  that space, a lower bound that converges to sigma_max);
- ``ratio_pgd``: r at the end of L2 PGD over ``||delta|| <= radius`` maximizing
  ``||h(x+delta) - h(x)||^2``, started at ``radius * v``.

Derived: ``anisotropy = ratio_worst / ratio_random`` of the row (a ratio of the two
sample means, free of the upward bias a per-sample ratio of noisy random-direction
estimates would have; 1 for a map that stretches every direction alike, for a linear
map ~ sqrt(d / stable rank)), and ``rel_ratio_* = ratio_* / (||h(x)|| / ||x||)`` per
sample, then averaged (scale-free, so models whose features have different magnitudes
compare). Layer rows: every ``Conv2d``/``Linear`` module (or the modules matching the
``modules`` globs) in ``named_modules()`` order, then one row named ``logits`` for the
model output. Summary ``*_median`` values are medians over the
module rows (the logits row excluded unless it is the only row) of the per-row means;
``logit_*`` values are the logits row. 95% confidence intervals (``*_ci_low``,
``*_ci_high``) come from a seeded percentile bootstrap over samples.

State: per sample and row a few floats (N x L, never features), concatenated on
merge and ordered by sample index, so merged shards equal one run. Per sample (the
report's side file, one column per row in report order): ``ratio_random``,
``ratio_worst``, ``ratio_pgd``, ``rel_ratio_random``, ``rel_ratio_worst``,
``rel_ratio_pgd`` for the measured samples (the first ``max_samples``).
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
import torch
from torch import nn

from ..attacks import pgd
from ..errors import ProbeError, first_line
from ..functional import flat_norm, logits as model_logits, seeded_generator, twice_differentiable
from ..hooks import select_layers, tap_outputs
from .. import tangents
from ..jacobian import (DENSE_ROWS_MAX, _unit as _unit_rows, directional_derivative_norms, top_singular_value,
                        top_singular_value_by_rows, truncated)
from ..probe import Batch, Context, Graph, Probe, ProbeResult, Range, Samples
from ..registry import register_probe
from ..linalg import LINEAR_TYPES
from ..stats import Histogram

LOGITS = "logits"
#: weight of the seeded random unit vector added to the previous row's top vector in each
#: row's start vector (ratio_worst): the previous row gives a good start, the random part
#: keeps every direction in reach
WARM_MIX = 0.5
#: quantities stored per sample and row (N x L each)
PER_ROW = ("ratio_random", "ratio_worst", "ratio_worst_prev", "ratio_pgd", "h_norm")


def _no_tick() -> None:
    """No progress to report (outside ``update``)."""


class _Ticker:
    """Progress inside one ``update``: the batch's ``n`` samples are spread evenly over
    ``parts`` steps (random directions, then each row's iteration and PGD), and each step
    reports its share to the progress bar (:meth:`Batch.advance`), so a bar of samples
    moves while a large batch is measured."""

    def __init__(self, batch: Batch, n: int, parts: int):
        self.batch, self.n, self.parts, self.done, self.reported = batch, n, max(parts, 1), 0, 0

    def __call__(self) -> None:
        self.done += 1
        due = min(self.n, self.n * self.done // self.parts)
        if due > self.reported:
            self.batch.advance(due - self.reported)
            self.reported = due


def default_radius(d: int) -> float:
    """``(8/255) * sqrt(d)``: the L2 norm of a Linf-8/255 sign perturbation (a vertex of
    the Linf ball, where Linf PGD ends), i.e. an RMS change of 8/255 per input value."""
    return 8.0 / 255.0 * math.sqrt(d)


def bootstrap_counts(n: int, resamples: int, generator: torch.Generator) -> torch.Tensor:
    """(resamples, n) float64 multiplicities of a nonparametric bootstrap: row r counts
    how often each sample was drawn in resample r (each row sums to n)."""
    idx = torch.randint(n, (resamples, n), generator=generator)
    counts = torch.zeros(resamples, n, dtype=torch.float64)
    return counts.scatter_add_(1, idx, torch.ones(resamples, n, dtype=torch.float64))


def _ci(stats: torch.Tensor, level: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile interval of bootstrap statistics ``stats`` (R, ...) along dim 0."""
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=stats.dtype)
    lo_hi = torch.quantile(stats, q, dim=0)
    return lo_hi[0], lo_hi[1]


def _median(values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Median as numpy (mean of the two middle values for an even count)."""
    return torch.quantile(values, 0.5, dim=dim)


def _deviation_loss(target: torch.Tensor):
    """PGD objective: sum over the batch of ``||h(x + delta) - h(x)||^2``."""

    def loss(out: torch.Tensor, _y) -> torch.Tensor:
        return (out.flatten(1) - target).pow(2).sum()

    return loss


#: keys whose row means get bootstrap 95% intervals
WITH_CI = ("ratio_random", "ratio_worst", "ratio_pgd", "anisotropy")
#: the per-sample columns of the side file (N x L) and their meaning and units
SAMPLE_UNITS = {
    "ratio_random": "||h(x+delta)-h(x)|| / ||delta||, random delta (feature units per input unit)",
    "ratio_worst": "sigma_max of dh/dx at x (feature units per input unit)",
    "ratio_pgd": "||h(x+delta)-h(x)|| / ||delta||, L2 PGD delta (feature units per input unit)",
    "rel_ratio_random": "ratio_random / (||h(x)|| / ||x||) (scale-free)",
    "rel_ratio_worst": "ratio_worst / (||h(x)|| / ||x||) (scale-free)",
    "rel_ratio_pgd": "ratio_pgd / (||h(x)|| / ||x||) (scale-free)",
}


@register_probe("smoothness")
class Smoothness(Probe):
    """Feature change per unit input change, per layer: random, worst-case (Jacobian) and PGD directions.

    Per layer row: ``ratio_random``, ``ratio_worst``, ``ratio_pgd``, ``anisotropy``,
    ``rel_ratio_random``, ``rel_ratio_worst``, ``rel_ratio_pgd`` (sample means) with
    ``*_ci_low/high``, ``power_rel_change`` (mean relative change of the worst-direction
    estimate over its last product: small = converged), ``type``, ``dim``.
    Summary: ``ratio_random_median``, ``ratio_worst_median``, ``ratio_pgd_median``,
    ``anisotropy_median``, ``rel_ratio_*_median``, ``logit_ratio_random``,
    ``logit_ratio_worst``, ``logit_ratio_pgd``, ``logit_anisotropy``, CIs, ``n``,
    ``radius``. See the module docstring for the definitions.
    """

    #: 2: forward-mode J q, warm start and the Ritz-residual stop (ratio_worst, and ratio_pgd's start, changed)
    revision = 2
    headline = ('ratio_random_median', 'ratio_worst_median', 'anisotropy_median', 'logit_ratio_worst')
    needs_input_grad = True  # h(x) and the Jacobians come from the engine's shared forward

    def __init__(
        self,
        *,
        layers: Annotated[str | None, "comma list of module-name globs (default: every Conv2d/Linear); a 'logits' row is always added"] = None,
        radius: Annotated[float | None, "L2 norm of the input perturbation (default (8/255)*sqrt(d)); 0: derivatives, no ratio_pgd",
                          Range(0)] = None,
        directions: Annotated[int, "random directions per sample (0: no ratio_random)", Range(0, 10_000)] = 4,
        iters: Annotated[int, "at most this many J^T J products (Krylov power iteration) for ratio_worst (0: no ratio_worst)",
                         Range(0, 1_000)] = 10,
        tol: Annotated[float, "a sample's ratio_worst iteration stops once its Ritz residual is below tol times "
                              "the estimate of sigma^2 (then sigma is within tol/2); 0: always iters products",
                       Range(0, 1)] = 1e-2,
        pgd_steps: Annotated[int, "L2 PGD steps for ratio_pgd (0: none)", Range(0, 10_000)] = 10,
        max_samples: Annotated[int | None, "measure the first N samples of the run only (none: all)", Range(1)] = 256,
        bootstrap: Annotated[int, "bootstrap resamples for 95% confidence intervals (0: none)", Range(0, 100_000)] = 1000,
    ):
        super().__init__()
        if isinstance(layers, (list, tuple)):
            self.layers = ",".join(layers)
        self.add_state("chunks", [], reduce="cat")
        self._names: list[str] = []
        self._types: dict[str, str] = {}
        self._logits_row = LOGITS
        self._tick = _no_tick

    # ----- setup ---------------------------------------------------------------
    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        globs = None if self.layers is None else [g.strip() for g in self.layers.split(",") if g.strip()]
        selected = select_layers(ctx.model, globs, option="smoothness.layers", types=LINEAR_TYPES,
                                 among="all", ignore=(LOGITS,))
        names = [n for n, _ in selected]
        self._names = names
        self._types = {n: type(m).__name__ for n, m in selected}
        self._logits_row = LOGITS if LOGITS not in names else "logits (output)"

    def feature_layers(self) -> list[str]:
        return list(self._names)

    def wants_batch(self, offset: int, size: int) -> bool:
        return self.max_samples is None or offset < self.max_samples

    @property
    def rows(self) -> list[str]:
        """Row names in report order: module rows, then the logits row."""
        return self._names + [self._logits_row]

    def radius_for(self, d: int) -> float:
        """The L2 radius used for inputs of dimension ``d``."""
        return default_radius(d) if self.radius is None else float(self.radius)

    # ----- per batch -----------------------------------------------------------
    def update(self, batch: Batch) -> None:
        pos = torch.arange(batch.x.shape[0])
        if self.max_samples is not None:
            pos = pos[batch.offset + pos < self.max_samples]
        if pos.numel() == 0:
            return
        x = batch.x[pos.to(batch.x.device)].detach()
        model, rows = batch.model, self.rows
        n, d, L = x.shape[0], x[0].numel(), len(rows)
        radius = self.radius_for(d)
        nan = torch.full((n, L), math.nan, dtype=torch.float64)
        out = {k: nan.clone() for k in PER_ROW}
        col = {r: j for j, r in enumerate(rows)}

        # 1. h(x) for every row, with the graph: the engine's pass when it covers exactly these samples
        if batch.graph is not None and n == batch.x.shape[0]:
            xg, h, calls, alias = self._from_graph(batch.graph)
        else:
            xg, h, calls, alias = self._outputs(model, x)
        h0 = {k: v.detach().flatten(1) for k, v in h.items()}
        work = [r for r in rows if r not in alias]
        self._tick = _Ticker(batch, n, 1 + len(work) * ((self.iters > 0) + (self.pgd_steps > 0 and radius > 0)))
        out["h_norm"] = torch.stack([flat_norm(h0[r]) for r in rows], 1).double().cpu()
        # 2. random directions: all rows share each perturbed forward pass
        if self.directions > 0:
            out["ratio_random"] = self._random_ratios(model, x, batch, pos, radius, h0)
        self._tick()
        # 3. worst direction: power iteration on J^T J per row, one shared forward graph
        v_top = self._worst_ratios(xg, h, x, batch, pos, work, col, out, calls) if self.iters > 0 else {}
        del h, xg  # the graph is not needed any more
        batch.release_graph(self)
        # 4. PGD in the L2 ball of radius, maximizing ||h(x+delta) - h(x)||, one run per row
        if self.pgd_steps > 0 and radius > 0:
            self._pgd_ratios(model, x, batch, pos, radius, work, col, h0, calls, v_top, out)

        for nm, src in alias.items():
            for k in ("ratio_worst", "ratio_worst_prev", "ratio_pgd"):
                out[k][:, col[nm]] = out[k][:, col[src]]
        self._tick = _no_tick  # drop the batch
        meta = {"d": d, "dims": [int(h0[r].shape[1]) for r in rows]}
        self.chunks = self.chunks + [{"index": (batch.offset + pos).long().cpu(),
                                      "x_norm": flat_norm(x).double().cpu(), **out, "meta": meta}]

    def _outputs(self, model: nn.Module, x: torch.Tensor):
        """A forward pass of our own (``batch.graph`` absent or covering other samples):
        ``x`` as a leaf requiring grad (when ``iters > 0``) and, as :meth:`_from_graph`,
        every row's output, the modules' call counts and the aliases of the logits row."""
        need_grad = self.iters > 0
        xg = x.clone().requires_grad_(need_grad)
        with torch.set_grad_enabled(need_grad), twice_differentiable(), tap_outputs(model, self._names) as taps:
            logits = model_logits(model, xg)
        aliases = frozenset(nm for nm in self._names if taps.is_same(nm, logits))
        return self._rows_of(xg, logits, taps.outputs, dict(taps.calls), aliases)

    def _from_graph(self, graph: Graph):
        """The rows from the engine's shared forward pass (``needs_input_grad``)."""
        return self._rows_of(graph.x, graph.logits, graph.features, graph.calls, graph.aliases)

    def _rows_of(self, xg: torch.Tensor, logits: torch.Tensor, features: dict[str, torch.Tensor],
                 calls: dict[str, int], aliases: frozenset[str]):
        """The input, every row's output ``h`` by row name, each module's call count and
        the modules whose output IS the model output (aliases of the logits row)."""
        missing = [nm for nm in self._names if nm not in features]
        if missing:
            raise ProbeError(f"smoothness: layers {', '.join(missing)} produced no output in the forward pass: "
                             f"choose other modules with --set smoothness.layers=...")
        h = {**{nm: features[nm] for nm in self._names}, self._logits_row: logits}
        # a module whose output IS the model output (a final Linear) shares the logits row's numbers
        alias = {nm: self._logits_row for nm in self._names if nm in aliases}
        return xg, h, dict(calls), alias

    def _random_ratios(self, model: nn.Module, x: torch.Tensor, batch: Batch, pos: torch.Tensor, radius: float,
                       h0: dict[str, torch.Tensor]) -> torch.Tensor:
        """(n, L) mean ratio over ``directions`` seeded isotropic unit directions per sample."""
        n, rows = x.shape[0], self.rows
        shape = (self.directions,) + tuple(x.shape[1:])
        g = torch.stack([torch.randn(shape, generator=gen, device=x.device, dtype=x.dtype)
                         for gen in batch.sample_rngs("smoothness/random", pos.tolist())])
        g = g / g.flatten(2).norm(dim=2).view(n, self.directions, *([1] * (x.ndim - 1)))
        acc = torch.zeros(n, len(rows), dtype=torch.float64, device=x.device)
        for k in range(self.directions):
            per_row = self._random_pass(model, x, g[:, k], radius, h0, self._names)
            acc += torch.stack([per_row[r] for r in rows], 1).double()
        return (acc / self.directions).cpu()

    def _worst_ratios(self, xg: torch.Tensor, h: dict[str, torch.Tensor], x: torch.Tensor, batch: Batch,
                      pos: torch.Tensor, work: list[str], col: dict[str, int],
                      out: dict[str, torch.Tensor], calls: dict[str, int]) -> dict[str, torch.Tensor]:
        """Fill ``ratio_worst`` and ``ratio_worst_prev`` of the ``work`` rows in ``out``;
        returns each row's top right singular vector estimate (the PGD start).

        ``J q`` comes from a forward-mode pass of the network up to the row's module
        (:func:`armetrics.tangents.jvp`; the double-backward trick where forward mode
        fails), ``J^T w`` from the shared graph. Each row starts at the previous row's
        top vector plus half a seeded random unit vector: rows of one network share much of
        their top input direction, so the iteration starts near it and still explores."""
        v_top: dict[str, torch.Tensor] = {}
        g = torch.stack([torch.randn(x.shape[1:], generator=gen, device=x.device, dtype=x.dtype)
                         for gen in batch.sample_rngs("smoothness/power", pos.tolist())])
        g = _unit_rows(g)
        previous, cache = None, tangents.PrimalCache()  # one input x: every row replays its primal values
        with torch.enable_grad():
            for r in work:
                v0 = g if previous is None else _unit_rows(previous) + WARM_MIX * g
                res = self._top_singular(batch.model, xg, x, h[r], r, v0, calls, cache)
                out["ratio_worst"][:, col[r]] = res.sigma.double().cpu()
                out["ratio_worst_prev"][:, col[r]] = res.sigma_prev.double().cpu()
                v_top[r] = previous = res.v
                self._tick()
        return v_top

    def _top_singular(self, model: nn.Module, xg: torch.Tensor, x: torch.Tensor, h: torch.Tensor, r: str,
                      v0: torch.Tensor, calls: dict[str, int], cache: "tangents.PrimalCache"):
        """:func:`top_singular_value` of row ``r``: forward-mode ``J q`` first, the
        double-backward trick when the model has no forward-mode rule for some op, and for
        a row of at most :data:`~armetrics.jacobian.DENSE_ROWS_MAX` outputs (logits) when
        neither works, the exact value from its Jacobian formed row by row
        (:func:`~armetrics.jacobian.top_singular_value_by_rows`, first-order backward only)."""
        name = "" if r == self._logits_row else r
        f = truncated(model, name, stop=calls.get(name, 1) == 1)
        failures = []
        for jvp in (lambda q: tangents.jvp(f, x, q, cache), None):
            try:
                with twice_differentiable():
                    return top_singular_value(xg, h, v0, self.iters, jvp=jvp, tol=self.tol)
            except (RuntimeError, NotImplementedError) as exc:
                failures.append(first_line(exc, 120))
        if h[0].numel() <= DENSE_ROWS_MAX:
            return top_singular_value_by_rows(xg, h)
        raise ProbeError(f"smoothness: the Jacobian of {r!r} needs forward-mode AD or double backward, and this model "
                         f"supports neither ({failures[0]}; {failures[1]}): use --set smoothness.iters=0")

    def _pgd_ratios(self, model: nn.Module, x: torch.Tensor, batch: Batch, pos: torch.Tensor, radius: float,
                    work: list[str], col: dict[str, int], h0: dict[str, torch.Tensor], calls: dict[str, int],
                    v_top: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
        """Fill ``ratio_pgd`` of the ``work`` rows in ``out``: one L2 PGD run per row."""
        gens = batch.sample_rngs("smoothness/pgd", pos.tolist())
        for r in work:
            name = "" if r == self._logits_row else r
            f = truncated(model, name, stop=calls.get(name, 1) == 1)
            target = h0[r]
            loss = _deviation_loss(target)
            init = radius * v_top[r] if r in v_top else None
            xa = pgd(lambda z: model_logits(f, z), x, None, radius, norm="L2", steps=self.pgd_steps,
                     loss_fn=loss, clamp=None, generator=gens, init=init)
            with torch.no_grad():
                ha = model_logits(f, xa).flatten(1)
            out["ratio_pgd"][:, col[r]] = (flat_norm(ha - target) / flat_norm(xa - x)).double().cpu()
            self._tick()

    def _random_pass(self, model: nn.Module, x: torch.Tensor, u: torch.Tensor, radius: float,
                     h0: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
        """Per-sample ratio along unit directions ``u`` for every row from ONE forward
        pass: finite differences at ``radius`` (> 0) or the derivative (radius 0)."""
        if radius == 0:
            try:
                with torch.no_grad():
                    norm_out, norms = directional_derivative_norms(model, x, u, names)
            except (RuntimeError, NotImplementedError) as exc:
                raise ProbeError(f"smoothness: radius=0 needs forward-mode AD, which this model does not support "
                                 f"({first_line(exc, 160)}): use a radius > 0") from None
            return {**norms, self._logits_row: norm_out}

        def deviation(name: str, o: torch.Tensor) -> torch.Tensor:
            o = o.flatten(1)
            ref = h0[name]
            if o.shape != ref.shape:  # an earlier call of a module called several times
                return torch.full((o.shape[0],), math.nan, dtype=o.dtype, device=o.device)
            return flat_norm(o - ref)

        with torch.no_grad(), tap_outputs(model, names, reduce=deviation) as taps:
            o = model_logits(model, x + radius * u)
        res = {nm: taps.outputs[nm] / radius for nm in names}
        res[self._logits_row] = flat_norm(o.flatten(1) - h0[self._logits_row]) / radius
        return res

    # ----- result --------------------------------------------------------------
    def compute(self) -> ProbeResult:
        rows = self.rows
        if not self.chunks:
            summary = {"n": 0, "radius": self.radius if self.radius is not None else math.nan}
            return ProbeResult(summary=summary, layers=[{"name": r} for r in rows])
        meta = self.chunks[0]["meta"]
        per_sample, n = self._per_sample()
        means = {k: v.mean(0) for k, v in per_sample.items()}  # (L,)
        means["anisotropy"] = means["ratio_worst"] / means["ratio_random"]  # ratio of the row's means
        boot = self._bootstrap(per_sample, n)
        layers = self._layer_rows(meta, means, boot)
        summary = self._summary(meta, n, means, boot)
        lc = len(rows) - 1
        dists = {}
        for k in ("ratio_random", "ratio_worst"):
            hist = Histogram(np.geomspace(1e-4, 1e4, 81))
            hist.update(per_sample[k][:, lc])
            dists[f"logit_{k}"] = hist.to_dict()
        return ProbeResult(summary=summary, layers=layers, distributions=dists, samples=self._samples(per_sample))

    def _samples(self, per_sample: dict[str, torch.Tensor]) -> Samples | None:
        """The side file's per-sample ratios (N x L, rows in report order)."""
        if not self.keeps_samples:
            return None
        index = torch.sort(torch.cat([c["index"] for c in self.chunks])).values
        return Samples(index=index.numpy().astype(np.int64),
                       columns={k: per_sample[k].double().numpy() for k in SAMPLE_UNITS},
                       units=dict(SAMPLE_UNITS), rows=list(self.rows))

    def _per_sample(self) -> tuple[dict[str, torch.Tensor], int]:
        """Every sample's ratios (N, L), in sample order, and N."""
        data = {k: torch.cat([c[k] for c in self.chunks]) for k in self.chunks[0] if k != "meta"}
        order = torch.argsort(data["index"])
        data = {k: v[order] for k, v in data.items()}
        xn = data["x_norm"][:, None]
        scale = data["h_norm"] / xn  # ||h(x)|| / ||x||
        return {
            "ratio_random": data["ratio_random"],
            "ratio_worst": data["ratio_worst"],
            "ratio_pgd": data["ratio_pgd"],
            "rel_ratio_random": data["ratio_random"] / scale,
            "rel_ratio_worst": data["ratio_worst"] / scale,
            "rel_ratio_pgd": data["ratio_pgd"] / scale,
            "power_rel_change": (data["ratio_worst"] - data["ratio_worst_prev"]).abs() / data["ratio_worst"],
        }, int(order.numel())

    def _bootstrap(self, per_sample: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
        """Bootstrap resamples (R, L) of the row means of the keys with intervals."""
        if self.bootstrap <= 0:
            return {}
        gen = seeded_generator(self.ctx.seed if self.ctx is not None else 0, "smoothness/bootstrap")
        w = bootstrap_counts(n, self.bootstrap, gen) / n  # (R, n): resampled means = w @ values
        boot = {k: w @ per_sample[k] for k in WITH_CI if k in per_sample}  # (R, L)
        boot["anisotropy"] = boot["ratio_worst"] / boot["ratio_random"]
        return boot

    def _layer_rows(self, meta: dict, means: dict[str, torch.Tensor], boot: dict[str, torch.Tensor]) -> list[dict]:
        layers = []
        for j, r in enumerate(self.rows):
            row = {"name": r, "type": "logits" if r == self._logits_row else self._types.get(r, ""),
                   "dim": meta["dims"][j]}
            for k, v in means.items():
                row[k] = float(v[j])
            for k in WITH_CI:
                if k in boot:
                    lo, hi = _ci(boot[k][:, j])
                    row[f"{k}_ci_low"], row[f"{k}_ci_high"] = float(lo), float(hi)
            layers.append(row)
        return layers

    def _summary(self, meta: dict, n: int, means: dict[str, torch.Tensor], boot: dict[str, torch.Tensor]) -> dict[str, float]:
        """Medians over the module rows and the logits row's values, with bootstrap intervals."""
        rows = self.rows
        module_cols = list(range(len(rows) - 1)) or [len(rows) - 1]
        lc = len(rows) - 1
        summary: dict[str, float] = {"n": n, "radius": self.radius_for(meta["d"])}
        for k in ("ratio_random", "ratio_worst", "ratio_pgd", "anisotropy", "rel_ratio_random", "rel_ratio_worst", "rel_ratio_pgd"):
            summary[f"{k}_median"] = float(_median(means[k][module_cols]))
        for k in ("ratio_random", "ratio_worst", "ratio_pgd", "anisotropy", "rel_ratio_random", "rel_ratio_worst"):
            summary[f"logit_{k}"] = float(means[k][lc])
        summary["power_rel_change_max"] = float(means["power_rel_change"].max())
        for k in WITH_CI:
            if k in boot:
                lo, hi = _ci(_median(boot[k][:, module_cols], dim=1))
                summary[f"{k}_median_ci_low"], summary[f"{k}_median_ci_high"] = float(lo), float(hi)
                lo, hi = _ci(boot[k][:, lc])
                summary[f"logit_{k}_ci_low"], summary[f"logit_{k}_ci_high"] = float(lo), float(hi)
        return summary
