"""armetrics performance goals, each measured as a ratio against a baseline run in the
same process and moment (absolute seconds are context only).

    python benchmarks/run.py            # full run (tens of minutes on 2 cores)
    python benchmarks/run.py --quick    # a few minutes
    python benchmarks/run.py --only data_probes,memory

Writes benchmarks/results.json and prints a table. Rows that miss their goal say so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(HERE))

BENCHES: dict[str, Callable[[argparse.Namespace], list[dict]]] = {}


def bench(name: str):
    def deco(fn):
        BENCHES[name] = fn
        return fn

    return deco


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Minimum wall time of ``repeats`` calls (the least disturbed run)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def interleaved(a: Callable, b: Callable, repeats: int) -> tuple[float, float]:
    """Best times of a and b, alternating them (and which goes first) so that machine
    noise and drift hit both."""
    ta, tb = [], []
    for i in range(repeats):
        pair = ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta))
        for f, acc in pair:
            t = time.perf_counter()
            f()
            acc.append(time.perf_counter() - t)
    return min(ta), min(tb)


def row(name, baseline, ours, ratio, goal, met, note="", **extra) -> dict:
    return {"name": name, "baseline": baseline, "ours": ours, "ratio": ratio, "goal": goal, "met": met, "note": note, **extra}


def synthetic_data(n: int, seed: int = 0):
    """n random 32x32 RGB images with labels, as an armetrics Data (uint8 in memory)."""
    import armetrics as am

    path = Path(f"/tmp/armetrics-bench-{n}.npz")
    if not path.exists():
        rng = np.random.default_rng(seed)
        np.savez(path, x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y=rng.integers(0, 10, n),
                 classes=np.array([str(i) for i in range(10)]))
    return am.load_data(path, batch_size=256, seed=0)


def small_model(width: int = 16):
    from models import small_cnn

    torch.manual_seed(0)
    return small_cnn(width=width).eval()


# ------------------------------------------------------------------ data probes vs plain loop
@bench("data_probes")
def bench_data_probes(args) -> list[dict]:
    import armetrics as am

    n = 1000 if args.quick else 4000
    data = synthetic_data(n)
    device = getattr(args, "device", "cpu")
    model = small_model().to(device)

    def plain():
        with torch.no_grad():
            for x, y in data:
                model(x.to(device)).argmax(1).cpu()

    def ours():
        am.analyze(model, data, ["accuracy", "margin", "confidence"], progress=False, device=device)

    plain()
    ours()  # warm up
    tb, to = interleaved(plain, ours, 10 if args.quick else 8)
    ratio = to / tb
    return [row(f"margin+confidence+accuracy, N={n}", f"plain model(x) loop {tb:.2f}s", f"{to:.2f}s", ratio,
                "<= 1.05x", ratio <= 1.05)]


# ------------------------------------------------------------------ memory
MEM_CHILD = """
import resource, sys, torch
sys.path.insert(0, {examples!r}); sys.path.insert(0, {bench!r})
import run as b
torch.set_num_threads(1)
data = b.synthetic_data({n}); model = b.small_model()
import armetrics as am
warm = b.synthetic_data(256)  # one batch: warm up either path (lazy imports, torch's allocator pools)
if {ours}:
    am.analyze(model, warm, ["accuracy", "margin", "confidence"], progress=False)
else:
    with torch.no_grad():
        model(next(iter(warm))[0]).argmax(1)
before = b.current_rss_mb()
if {ours}:
    am.analyze(model, data, ["accuracy", "margin", "confidence"], progress=False)
else:
    with torch.no_grad():
        for x, y in data:
            model(x).argmax(1)
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def current_rss_mb() -> float:
    """Resident set size of this process now (Linux /proc), MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb(n: int, ours: bool) -> tuple[float, float]:
    """(RSS before the run, peak RSS) of a fresh process that loaded the model and the
    data and warmed up on one batch of 256 images (imports, torch's allocator), then
    ran plain inference or the data probes over n images."""
    code = MEM_CHILD.format(examples=str(ROOT / "examples"), bench=str(HERE), n=n, ours=ours)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, peak = map(float, out.stdout.strip().splitlines()[-1].split())
    return before, peak


@bench("memory")
def bench_memory(args) -> list[dict]:
    """Peak memory the run adds on top of the loaded process (model, data, torch runtime),
    data probes vs plain inference; and its growth with N (must not grow: no per-sample state)."""
    rows = []
    sizes = (1000, 4000) if args.quick else (1000, 10000)
    added = {}
    for n in sizes:
        synthetic_data(n)
        (b0, b1), (o0, o1) = peak_rss_mb(n, False), peak_rss_mb(n, True)
        base, ours = max(b1 - b0, 1.0), max(o1 - o0, 1.0)
        added[n] = ours
        ratio = ours / base
        rows.append(row(f"peak RSS added by the run, N={n}", f"plain inference +{base:.0f} MB (of {b1:.0f})",
                        f"+{ours:.0f} MB (of {o1:.0f})", ratio, "<= 1.2x", ratio <= 1.2))
    lo, hi = sizes
    growth = added[hi] - added[lo]
    rows.append(row(f"growth of the added peak, N={lo}->{hi}", f"+{added[lo]:.0f} MB at N={lo}", f"{growth:+.0f} MB",
                    added[hi] / added[lo], "flat (<= 1.2x)", added[hi] <= 1.2 * added[lo]))
    return rows


# ------------------------------------------------------------------ scaling
@bench("scaling")
def bench_scaling(args) -> list[dict]:
    import armetrics as am

    rows = []
    sizes = (1000, 2000, 4000)
    model = small_model()
    datas = {n: synthetic_data(n) for n in sizes}
    am.analyze(model, synthetic_data(256), ["accuracy", "margin", "confidence"], progress=False)
    times = {n: float("inf") for n in sizes}
    for _ in range(2 if args.quick else 4):  # sizes interleaved: drift of the machine hits all of them
        for n in sizes:
            t = time.perf_counter()
            am.analyze(model, datas[n], ["accuracy", "margin", "confidence"], progress=False)
            times[n] = min(times[n], time.perf_counter() - t)
    for n in sizes[1:]:
        ratio = (times[n] / n) / (times[sizes[0]] / sizes[0])
        rows.append(row(f"time per image, N={n} vs N={sizes[0]}", f"{times[sizes[0]]:.2f}s @1k", f"{times[n]:.2f}s",
                        ratio, "linear (0.8-1.2x)", 0.8 <= ratio <= 1.2))
    data = synthetic_data(1000)
    for width in (16, 32, 64):
        m = small_model(width)
        t = best_of(lambda: am.analyze(m, data, ["accuracy", "margin", "confidence"], progress=False), 2)
        params = sum(p.numel() for p in m.parameters())
        rows.append(row(f"model size: small_cnn width {width} ({params / 1e3:.0f}k params), N=1000", "", f"{t:.2f}s",
                        None, "context", True))
    return rows


# ------------------------------------------------------------------ spectrum
def wrn(quick: bool):
    """RobustBench's ``Standard`` WRN-28-10 with random weights (eval mode)."""
    from armetrics._robustbench import architecture

    torch.manual_seed(0)
    return architecture("Standard").eval()


@bench("spectrum_reshape")
def bench_spectrum_reshape(args) -> list[dict]:
    """Default spectrum (reshape, BN folded) vs WeightWatcher 0.7.7 analyze() on WRN-28-10."""
    import armetrics as am

    model = wrn(args.quick)
    try:
        import weightwatcher as ww
    except ImportError:
        return [row("spectrum reshape, WRN-28-10", "weightwatcher not installed (pip install weightwatcher==0.7.7)",
                    "", None, "<= 0.25x", False, "baseline missing")]
    import logging

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)

    def ours():
        am.analyze(model, None, ["spectrum"])

    def baseline():
        ww.WeightWatcher(model=model).analyze()

    ours()
    tb, to = interleaved(baseline, ours, 1 if args.quick else 2)
    ratio = to / tb
    return [row("spectrum default (reshape, BN folded), WRN-28-10", f"WeightWatcher 0.7.7 analyze() {tb:.1f}s",
                f"{to:.2f}s", ratio, "<= 0.25x", ratio <= 0.25)]


#: the largest zoo architectures: WRN-70-16 (267M), WRN-106-16 (415M), ResNeSt-152 (cifar10 Linf entries)
LARGE_ZOO = ("Gowal2020Uncovering_70_16", "Rebuffi2021Fixing_106_16_cutmix_ddpm", "Sehwag2021Proxy_ResNest152")

WW_CHILD = """
import logging, sys, warnings
warnings.filterwarnings("ignore")
import torch
from armetrics._robustbench import architecture
import weightwatcher as ww
logging.getLogger("weightwatcher").setLevel(logging.ERROR)
model = architecture(sys.argv[1]).eval()
model.load_state_dict(torch.load(sys.argv[2], weights_only=True))
ww.WeightWatcher(model=model).analyze()
"""


def _whole_process(cmd: list[str]) -> float:
    """Wall seconds of a fresh process running ``cmd`` (imports, loading and all)."""
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - t


@bench("spectrum_zoo_large")
def bench_spectrum_zoo_large(args) -> list[dict]:
    """Whole-process ``armetrics analyze FILE --arch robustbench:NAME --probes spectrum``
    vs a process loading the same file into the same architecture and running
    WeightWatcher 0.7.7 ``analyze()``, on the largest zoo architectures (random weights)."""
    import importlib.util

    if importlib.util.find_spec("weightwatcher") is None:
        return [row("spectrum, largest zoo entries", "weightwatcher not installed (pip install weightwatcher==0.7.7)",
                    "", None, "<= 0.25x", False, "baseline missing")]
    import tempfile

    from armetrics._robustbench import architecture

    rows = []
    names = LARGE_ZOO[:1] if args.quick else LARGE_ZOO
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            torch.manual_seed(0)
            model = architecture(name).eval()
            params = sum(p.numel() for p in model.parameters())
            path = Path(tmp) / f"{name}.pt"
            torch.save(model.state_dict(), path)
            del model
            ours = [sys.executable, "-m", "armetrics", "analyze", str(path), "--arch", f"robustbench:{name}",
                    "--probes", "spectrum", "--quiet", "--out", str(Path(tmp) / "r.json")]
            baseline = [sys.executable, "-c", WW_CHILD, name, str(path)]
            tb, to = interleaved(lambda: _whole_process(baseline), lambda: _whole_process(ours), 1)
            rows.append(row(f"spectrum default, whole process, {name} ({params / 1e6:.0f}M params)",
                            f"WeightWatcher 0.7.7 analyze() {tb:.1f}s", f"{to:.1f}s", to / tb, "<= 0.25x",
                            to / tb <= 0.25))
            path.unlink()
    return rows


def _conv_layers(model, quick: bool):
    """(module, input HxW) of every Conv2d with a kernel > 1x1 (1x1 convs need no FFT);
    --quick keeps one conv per input size."""
    from armetrics.linalg import trace_layers

    traced = [t for t in trace_layers(model, (3, 32, 32)) if isinstance(t.module, torch.nn.Conv2d)
              and t.module.kernel_size != (1, 1)]
    layers = [(t.module, tuple(t.input_shape[-2:])) for t in traced]
    if quick:
        seen, out = set(), []
        for m, hw in layers:
            key = (hw, m.in_channels, m.out_channels)
            if key not in seen:
                seen.add(key)
                out.append((m, hw))
        layers = out
    return layers


@bench("spectrum_fft")
def bench_spectrum_fft(args) -> list[dict]:
    """fft singular values of every conv (> 1x1) at its real input size vs
    (a) the bare batched LAPACK SVD (torch.linalg.svdvals) of the prebuilt per-frequency
        matrices A(u, v) of the same half spectrum: the floor of the SVD route;
    (b) armetrics' own BLAS/LAPACK work alone: the kernel autocorrelation products,
        eigvalsh of the prebuilt Gram matrices in the same worker threads, and the SVDs
        of the frequencies the accuracy guard rejects: what the DFT assembly, guard,
        threads and sorting add on top;
    (c) a per-frequency loop of numpy.linalg.svd over all H*W frequencies (np.fft.fft2),
        as in Sedghi et al.'s code.
    Timed layer by layer (one layer's prebuilt matrices in memory at a time), best of
    the repeats per layer, summed."""
    from armetrics import linalg

    layers = _conv_layers(wrn(args.quick), args.quick)
    repeats = 2
    totals = {"ours": 0.0, "svd": 0.0, "own": 0.0, "numpy": 0.0}
    for m, hw in layers:
        w, dil, g = m.weight.detach().double(), m.dilation, m.groups
        us, vs, mult = linalg.half_spectrum(*hw)
        a = linalg.conv_frequency_matrices(w, hw, us, vs, dil, g)
        da, db, grams = linalg.kernel_autocorrelation(w, dil, g)
        gram = linalg._dft(linalg._phase(us, vs, da, db, hw).numpy(), grams.reshape(len(grams), -1).numpy())
        gram = gram.reshape(-1, *grams.shape[-2:])
        bad = np.isnan(linalg._gram_svdvals(gram)).any(axis=1)
        rejected = a.reshape(-1, *a.shape[-2:]).numpy()[bad]

        def own():
            linalg.kernel_autocorrelation(w, dil, g)
            linalg._in_parallel(linalg._gram_svdvals, gram)
            if len(rejected):
                linalg._in_parallel(linalg._svd_np, rejected)

        def numpy_loop():
            k = w.numpy().transpose(2, 3, 1, 0)  # (kh, kw, C_in, C_out), as Sedghi et al.'s code
            t = np.fft.fft2(k, hw, axes=(0, 1))
            for u in range(hw[0]):
                for v in range(hw[1]):
                    np.linalg.svd(t[u, v], compute_uv=False)

        fns = {"ours": lambda: linalg.fft_singular_values(w, hw, dil, g), "svd": lambda: torch.linalg.svdvals(a), "own": own}
        best = {name: float("inf") for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t)
        best["numpy"] = best_of(numpy_loop, 1)
        for name in totals:
            totals[name] += best[name]
    t_ours = totals["ours"]
    what = f"{len(layers)} convs of WRN-28-10" + (" (one per shape: --quick)" if args.quick else "")
    return [
        row(f"spectrum fft, {what}", f"batched LAPACK SVD of the prebuilt A(u,v) {totals['svd']:.1f}s", f"{t_ours:.1f}s",
            t_ours / totals["svd"], "<= 1.1x the floor", t_ours / totals["svd"] <= 1.1),
        row(f"spectrum fft vs its own LAPACK calls, {what}", f"autocorrelation + eigvalsh of prebuilt Grams + rejected SVDs {totals['own']:.1f}s",
            f"{t_ours:.1f}s", t_ours / totals["own"], "<= 1.1x", t_ours / totals["own"] <= 1.1),
        row(f"spectrum fft vs per-frequency numpy loop, {what}", f"numpy.linalg.svd loop {totals['numpy']:.1f}s", f"{t_ours:.1f}s",
            t_ours / totals["numpy"], ">= 5x faster (<= 0.2x)", t_ours / totals["numpy"] <= 0.2),
    ]


# ------------------------------------------------------------------ smoothness, robust accuracy
class OnDevice:
    """``data`` whose ``batches()`` come on ``device`` (for loops written for CPU batches)."""

    def __init__(self, data, device: str):
        self.data, self.device = data, device

    def batches(self):
        for x, y in self.data.batches():
            yield x.to(self.device), y.to(self.device)


@bench("smoothness")
def bench_smoothness(args) -> list[dict]:
    """smoothness / robust_accuracy probes vs hand-written loops doing the same passes
    (benchmarks/baselines.py), on the shipped eps=0 checkpoint."""
    import armetrics as am
    from baselines import hand_pgd, hand_smoothness

    device = getattr(args, "device", "cpu")
    model = am.load_model(ROOT / "examples/checkpoints/small_cnn_eps0.pt", arch=f"{ROOT / 'examples/models.py'}:small_cnn",
                          device=device)
    n = 16 if args.quick else 64
    data = am.load_data("cifar10-sample", n=n, batch_size=16)
    hand_data = OnDevice(data, device)  # the hand-written loops read data.batches() as they are

    def probe(name):
        return lambda: am.analyze(model, data, [name], options={name: {"max_samples": n}} if name == "smoothness" else None,
                                  device=device)

    hand_smoothness(model, hand_data)
    rows = []
    for name, hand in (("smoothness", lambda: hand_smoothness(model, hand_data)),
                       ("robust_accuracy", lambda: hand_pgd(model, hand_data))):
        tb, to = interleaved(hand, probe(name), 6 if args.quick else 3)
        goal = 1.2 if name == "smoothness" else 1.05
        rows.append(row(f"{name} (defaults), {n} images, small_cnn", f"hand-written loop {tb:.2f}s", f"{to:.2f}s",
                        to / tb, f"<= {goal}x", to / tb <= goal))
    return rows


# ------------------------------------------------------------------ early exit (issue 20, part 4)
def _early_exit_case(model, data, before, after, repeats: int, device: str) -> tuple[float, float, dict, dict]:
    """Interleaved best times of ``am.analyze`` with the probe instances ``before()`` and
    ``after()`` (fresh each run), and the summaries of their last runs."""
    import armetrics as am

    out: dict = {}

    def run(key, make):
        probe = make()
        out[key] = am.analyze(model, data, [probe], progress=False, samples=False, device=device).summary(probe.name)

    tb, ta = interleaved(lambda: run("b", before), lambda: run("a", after), repeats)
    return tb, ta, out["b"], out["a"]


def _max_rel_diff(b: dict, a: dict, keys) -> float:
    """Largest relative difference of the summary values ``keys`` (0 where both are equal, inf included)."""
    worst = 0.0
    for k in keys:
        if b[k] != a[k]:
            worst = max(worst, abs(a[k] - b[k]) / max(abs(b[k]), 1e-300))
    return worst


@bench("early_exit")
def bench_early_exit(args) -> list[dict]:
    """robust_accuracy (PGD) and margin's input-space distance (FAB, PGD bisection) as they
    were before issue 20 (benchmarks/baseline_attacks.py: every sample runs every step and
    every run) vs today's early exit (PGD: a sample stops at its first misclassified iterate;
    bisection: a radius's targeted run only on the samples the untargeted run did not flip),
    interleaved in one process on the shipped eps=0 checkpoint, results compared in the same run."""
    import armetrics as am
    from armetrics.probes.margin import Margin
    from armetrics.probes.robust_accuracy import RobustAccuracy
    from baseline_attacks import BaselineMargin, BaselineRobustAccuracy

    device = getattr(args, "device", "cpu")
    model = am.load_model(ROOT / "examples/checkpoints/small_cnn_eps0.pt", arch=f"{ROOT / 'examples/models.py'}:small_cnn",
                          device=device)
    repeats = 3 if args.quick else 5
    rows = []
    n = 64 if args.quick else 256
    data = am.load_data("cifar10-sample", n=n, batch_size=128)
    tb, ta, b, a = _early_exit_case(model, data, BaselineRobustAccuracy, RobustAccuracy, repeats, device)
    same = (a["robust"], a["correct"]) == (b["robust"], b["correct"])
    rows.append(row(f"robust_accuracy (PGD defaults), {n} images, eps=0 small_cnn", f"before {tb:.2f}s", f"{ta:.2f}s",
                    ta / tb, "<= 0.7x, equal results", ta / tb <= 0.7 and same,
                    f"robust {b['robust']} before, {a['robust']} after, of {a['correct']} correct"))
    keys = [f"input_margin_{nm}_{q}" for nm in ("L2", "Linf") for q in ("mean", "median", "q25", "q75", "failed")]
    for attack in ("fab", "pgd"):
        n = 8 if args.quick else 16
        data = am.load_data("cifar10-sample", n=n, batch_size=n)
        opts = {"input": True, "attack": attack}
        tb, ta, b, a = _early_exit_case(model, data, lambda: BaselineMargin(**opts), lambda: Margin(**opts),
                                        1 if args.quick else 2, device)
        diff = _max_rel_diff(b, a, keys)
        if attack == "fab":
            goal, same = "<= 0.7x, equal results", diff <= 1e-6
        else:  # revision 2: a radius flips at PGD's first misclassified iterate, so distances can only shrink
            goal = "<= 0.7x, distances equal or smaller"
            same = all(a[k] <= b[k] * (1 + 1e-6) for k in keys if "failed" not in k) and \
                all(a[k] <= b[k] for k in keys if "failed" in k)
        rows.append(row(f"margin input=true attack={attack} (L2+Linf), {n} images, eps=0 small_cnn", f"before {tb:.1f}s",
                        f"{ta:.1f}s", ta / tb, goal, ta / tb <= 0.7 and same,
                        f"input_margin_* summary: max rel diff {diff:.1e}"))
    return rows


# ------------------------------------------------------------------ cost estimate
def _estimate_workloads(quick: bool) -> list[tuple[str, Callable[[], torch.nn.Module], int, dict]]:
    """(label, model factory, images, probe options) of the estimate rows: the shipped
    small_cnn, and robustbench WideResNets with random weights (smoothness cut down on
    WRN-28-10 so the row takes minutes on 2 cores)."""
    import armetrics as am

    def small():
        return am.load_model(ROOT / "examples/checkpoints/small_cnn_eps0.pt", arch=f"{ROOT / 'examples/models.py'}:small_cnn")

    def wide(depth: int, widen: int):
        from armetrics._robustbench import import_robustbench

        import_robustbench()
        from robustbench.model_zoo.architectures.wide_resnet import WideResNet

        torch.manual_seed(0)
        return WideResNet(depth=depth, widen_factor=widen).eval()

    wrn28 = {"smoothness": {"max_samples": 2, "layers": "block1.layer.0.conv1,block3.layer.3.conv2"}}
    if quick:
        return [("small_cnn", small, 16, {}), ("WRN-16-4", lambda: wide(16, 4), 4, {"smoothness": {"max_samples": 2}})]
    return [("small_cnn", small, 32, {}), ("WRN-16-4", lambda: wide(16, 4), 16, {"smoothness": {"max_samples": 4}}),
            ("WRN-16-4, smoothness on 16", lambda: wide(16, 4), 64, {"smoothness": {"max_samples": 16}}),
            ("WRN-16-4, smoothness on 64", lambda: wide(16, 4), 64, {"smoothness": {"max_samples": 64}}),
            ("WRN-28-10", lambda: wide(28, 10), 8, wrn28)]


@bench("smoothness_speed")
def bench_smoothness_speed(args) -> list[dict]:
    """smoothness before issue 20 (``smoothness_before`` in baselines.py: double-backward
    J q, random start per row, always ``iters`` products) vs today's (forward-mode J q with
    replayed primal values, warm start, Ritz-residual stop), interleaved in one process on
    random-weight WRN-16-4 (every row) and WRN-28-10 (three rows and the logits).

    Accuracy: each row's ratio_worst vs a 40-product reference (the old iteration with
    ``iters=40``); the worst row's relative error is the one reported. Rows: the
    ratio_worst computation alone (``directions=0, pgd_steps=0``) at the default
    ``iters=10`` on both sides, then **at equal accuracy**: each side at the smallest
    ``iters`` of a ladder whose worst row is within 1% of the reference; and the whole
    probe with its defaults (ratio_random before vs after, ratio_pgd before vs after)."""
    import armetrics as am
    import baselines  # noqa: F401  registers smoothness_before
    from armetrics._robustbench import import_robustbench

    import_robustbench()
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet

    rows = []
    ladder = (10, 12, 14, 16, 20, 24, 30)
    cases = [("WRN-16-4", 16, 4, 4 if args.quick else 8, None),
             ("WRN-28-10", 28, 10, 2 if args.quick else 4,
              "block1.layer.0.conv1,block2.layer.0.conv1,block3.layer.3.conv2")]
    for label, depth, widen, n, layers in cases:
        torch.manual_seed(0)
        model = WideResNet(depth=depth, widen_factor=widen).eval().to(args.device if hasattr(args, "device") else "cpu")
        data = am.load_data("cifar10-sample", n=n, batch_size=n)

        def run(name, **opts):
            o = {"max_samples": n, "bootstrap": 0, "layers": layers, **opts}
            return am.analyze(model, data, [name], options={name: o}, progress=False, samples=False).layers(name)

        ref = run("smoothness_before", iters=40, directions=0, pgd_steps=0)

        def error(res) -> float:
            return max(abs(a["ratio_worst"] / r["ratio_worst"] - 1) for a, r in zip(res, ref))

        def enough(name) -> tuple[int, float]:
            """The smallest iters of the ladder within 1% of the reference (and its error)."""
            for it in ladder:
                err = error(run(name, iters=it, directions=0, pgd_steps=0))
                if err <= 0.01:
                    return it, err
            return it, err

        it_b, _ = enough("smoothness_before")
        it_a, _ = enough("smoothness")
        worst = {"directions": 0, "pgd_steps": 0}
        parts = (("ratio_worst only, iters=10 both", {**worst, "iters": 10}, {**worst, "iters": 10}),
                 (f"ratio_worst only, equal accuracy (iters {it_b} before, {it_a} after)",
                  {**worst, "iters": it_b}, {**worst, "iters": it_a}),
                 ("whole probe, defaults", {}, {}))
        for part, opts_b, opts_a in parts:
            out = {}
            tb, ta = interleaved(lambda: out.__setitem__("b", run("smoothness_before", **opts_b)),
                                 lambda: out.__setitem__("a", run("smoothness", **opts_a)), 2)
            err_a, err_b = error(out["a"]), error(out["b"])
            note = f"ratio_worst vs 40 products: worst row {err_a:.2%} after, {err_b:.2%} before"
            if not opts_a:
                rnd = max(abs(a["ratio_random"] / b["ratio_random"] - 1) for a, b in zip(out["a"], out["b"]))
                pgd = max(abs(a["ratio_pgd"] / b["ratio_pgd"] - 1) for a, b in zip(out["a"], out["b"]))
                note += f"; ratio_random max rel diff {rnd:.1e}; ratio_pgd max rel diff {pgd:.1e}"
            rows.append(row(f"smoothness {part}, {label}, {len(ref)} rows, {n} images", f"before {tb:.1f}s", f"{ta:.1f}s",
                            ta / tb, "<= 0.5x (2x faster), worst row <= 1%", ta / tb <= 0.5 and err_a <= 0.01, note))
    return rows


@bench("estimate")
def bench_estimate(args) -> list[dict]:
    """``armetrics.estimate`` (the data pass, timed on slices of the first batch) vs the
    measured data pass of the same ``analyze`` (its wall time less the weight-only
    probes'), default probes, on few images."""
    import armetrics as am
    from armetrics.cli.analyze import default_probes

    probes = default_probes()
    rows = []
    for label, make, n, options in _estimate_workloads(args.quick):
        model = make()
        data = am.load_data("cifar10-sample", n=n, batch_size=256)
        t = time.perf_counter()
        est = am.estimate(model, data, probes, options=options, seed=0)
        spent = time.perf_counter() - t
        t = time.perf_counter()
        report = am.analyze(model, data, probes, options=options, seed=0, progress=False)
        wall = time.perf_counter() - t
        entries = report.data["probes"]
        measured = wall - sum(entries[p]["seconds"] for p in est.weight_seconds)
        per_probe = {p: round(est.seconds[p] / entries[p]["seconds"], 2) if entries[p]["seconds"] > 0 else None
                     for p in est.seconds}
        ratio = est.total / measured
        note = (f"estimate took {spent:.1f}s; est/measured per probe: "
                + ", ".join(f"{p} {r}" for p, r in per_probe.items()))
        rows.append(row(f"estimate vs measured data pass: {label}, {n} images, default probes", f"measured {measured:.1f}s",
                        f"estimated {est.total:.1f}s", ratio, "within ±30% (0.7-1.3x)", 0.7 <= ratio <= 1.3, note,
                        estimate=est.to_dict(), probe_seconds={p: entries[p]["seconds"] for p in entries}))
    return rows


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "platform": platform.platform(), "processor": platform.processor()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    ap.add_argument("--only", help="comma-separated benchmark names: " + ", ".join(BENCHES))
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    ap.add_argument("--device", default="cpu", help="where the smoothness, robust_accuracy, early_exit and data_probes "
                                                    "benches run (e.g. cuda; see gpu_check.sh)")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(BENCHES)
    rows = []
    for name in names:
        print(f"# {name} ...", file=sys.stderr, flush=True)
        rows += [{"bench": name, **r} for r in BENCHES[name](args)]
    width = max(len(r["name"]) for r in rows)
    print(f"{'workload':<{width}}  {'ratio':>7}  {'goal':<22} {'met':<4} baseline | ours")
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.3f}"
        print(f"{r['name']:<{width}}  {ratio:>7}  {r['goal']:<22} {'yes' if r['met'] else 'NO':<4} {r['baseline']} | {r['ours']}"
              + (f"  ({r['note']})" if r["note"] else ""))
    existing = json.loads(args.out.read_text()) if args.out.exists() and args.only else {"rows": []}
    kept = [r for r in existing.get("rows", []) if r["bench"] not in names]
    args.out.write_text(json.dumps({"machine": machine(), "quick": args.quick,
                                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": kept + rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
