"""Singular values of the linear maps of ``nn.Linear`` and ``nn.Conv2d`` layers.

A convolution ``y = conv(x; W)`` with kernel ``W`` of shape
``(C_out, C_in/g, kh, kw)`` (``g`` groups) is a linear map from inputs ``x`` of shape
``(C_in, H, W)`` to outputs; "its singular values" can mean three matrices, all
computed here by :func:`singular_values` (1-D tensor, descending):

``reshape``
    The singular values of the kernel reshaped to a matrix ``C_out x (C_in/g·kh·kw)``
    (per group: the block-diagonal matrix of the ``g`` group kernels, i.e. the union
    of the groups' singular values). It is the Jacobian of the layer at ONE output
    pixel (the map from a ``kh x kw`` input patch to the ``C_out`` outputs there). It
    does not depend on the input size. ``min(C_out, C_in·kh·kw)`` values (per group).

``fft``
    The exact singular values of the convolution as an operator on inputs of
    ``input_shape = (C, H, W)`` with **circular** padding and **stride 1** (Sedghi,
    Gupta, Long, "The singular values of convolutional layers", ICLR 2019). The
    operator is block-circulant, so the 2-D DFT block-diagonalises it: at each
    frequency ``(u, v)`` it acts as the complex ``C_out x C_in`` matrix
    ``A(u, v) = sum_{a,b} W[:, :, a, b] · exp(-2πi (u·a·dh/H + v·b·dw/W))``
    (the DFT of the kernel embedded, dilated, in an ``H x W`` grid; taps that wrap
    around add up), and the operator's ``H·W·min(C_out, C_in)`` singular values are
    those of all ``A(u, v)``. Since ``W`` is real, ``A(-u, -v) = conj A(u, v)`` has the
    same singular values: only one frequency of each pair is decomposed and counted
    twice (self-paired frequencies once). Groups make each ``A(u, v)``
    block-diagonal: one decomposition per group block. For a layer with stride > 1 or
    zero padding this is NOT the layer's operator but the circular stride-1 one (as in
    Sedghi et al.); use ``power`` for the true operator.

    How (all float64): the Gram matrices ``A(u, v)ᴴA(u, v)`` of every frequency are the
    DFT of the kernel's autocorrelation (:func:`kernel_autocorrelation`: ``K(K+1)/2``
    real products for ``K`` taps, whatever the input size), and their eigenvalues
    (``eigvalsh``) are the squared singular values. A frequency whose Gram matrix is
    too ill-conditioned for ~1e-8 relative accuracy (:func:`svdvals`, :data:`GRAM_RTOL`)
    is redone by the SVD of ``A(u, v)`` itself. Worker threads (one per torch thread)
    each build and decompose a few frequencies at a time with single-threaded LAPACK.

``power``
    The top-``k`` singular values of the TRUE operator of the layer on inputs of
    ``input_shape``: its own stride, padding (zeros or its ``padding_mode``),
    dilation and groups. Computed in float64 by ARPACK (``scipy.sparse.linalg.svds``)
    on a ``LinearOperator`` whose matvec is the convolution and whose rmatvec is its
    adjoint (autograd vector-Jacobian product); dense SVD when the operator is tiny.

For ``nn.Linear`` all three are the singular values of the weight matrix (``power``:
its top ``k``). ``bn`` folds an eval-mode BatchNorm that follows the layer into it:
output channel ``o`` is scaled by ``gamma_o / sqrt(running_var_o + eps)`` (BN's shift
does not change the Jacobian). Which BN follows which layer is found by tracing one
forward pass (:func:`trace_layers`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import ConfigError, ProbeError

Method = Literal["reshape", "fft", "power"]
METHODS: tuple[str, ...] = ("reshape", "fft", "power")
LINEAR_TYPES: tuple[type, ...] = (nn.Conv2d, nn.Linear)

# Largest complex batch (elements) built at once by the FFT method (128 MB as complex128).
_FFT_CHUNK_ELEMENTS = 8 * 1024 * 1024
# ``power`` decomposes densely operators with min(rows, cols) at most this size, or of at
# most this many entries when (nearly) all values are asked for.
_DENSE_MAX_DIM = 32
_DENSE_MAX_ENTRIES = 1 << 24


# ----------------------------------------------------------------------------- tracing
@dataclass
class TracedLayer:
    """One ``Conv2d``/``Linear`` layer seen in a traced forward pass.

    ``input_shape``/``output_shape``: one sample's shapes (batch dimension dropped) at
    the layer's first call; ``calls``: how often the layer ran in the pass; ``bn_name``
    / ``bn``: the BatchNorm whose input tensor IS this layer's output (same tensor
    object, not modified in place in between), or None.
    """

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    calls: int = 1
    bn_name: str | None = None
    bn: nn.Module | None = None


def _first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], torch.Tensor):
        return obj[0]
    return None


def trace_layers(model: nn.Module, input_shape: Sequence[int], types: tuple[type, ...] = LINEAR_TYPES) -> list[TracedLayer]:
    """Run ``model`` once on a zero input of one sample's ``input_shape`` ``(C, H, W)``
    and return its layers of ``types`` in the order they first ran, with their input
    shapes and the BatchNorm (if any) that directly consumes each one's output.

    "BN follows layer" is decided on the traced tensors, not on module order: the
    BN's input must be the very tensor the layer returned, unmodified (its version
    counter unchanged, so an in-place op such as ``ReLU(inplace=True)`` in between
    prevents folding). The model runs in eval mode under ``no_grad`` (BN running
    statistics are not touched); its train/eval flags are restored afterwards.
    """
    names: dict[int, str] = {}
    for name, module in model.named_modules():
        names.setdefault(id(module), name)
    x = _zero_input(model, input_shape)

    records: dict[str, TracedLayer] = {}
    outputs: dict[int, tuple[str, torch.Tensor, int]] = {}  # id(tensor) -> (layer, tensor, version)

    def pre_hook(module, args):
        name = names.get(id(module))
        inp = _first_tensor(args)
        if name is None or inp is None:
            return
        if isinstance(module, types):
            if name in records:
                records[name].calls += 1
            else:
                records[name] = TracedLayer(name, module, tuple(inp.shape[1:]), ())
        if isinstance(module, _BatchNorm):
            hit = outputs.get(id(inp))
            if hit is not None and hit[1] is inp and inp._version == hit[2]:
                rec = records[hit[0]]
                if rec.bn is None and rec.calls == 1:
                    rec.bn_name, rec.bn = name, module

    def post_hook(module, args, out):
        name = names.get(id(module))
        out = _first_tensor(out)
        if name in records and out is not None:
            rec = records[name]
            if not rec.output_shape:
                rec.output_shape = tuple(out.shape[1:])
            outputs[id(out)] = (name, out, out._version)

    _run_hooked(model, x, types, pre_hook, post_hook)
    return list(records.values())


def _zero_input(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    """A zero batch of one sample of ``input_shape``, on the model's device, in its float dtype."""
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    return torch.zeros((1, *map(int, input_shape)), device=device, dtype=dtype)


def _run_hooked(model: nn.Module, x: torch.Tensor, types: tuple[type, ...], pre_hook, post_hook) -> None:
    """Run ``model(x)`` in eval mode under ``no_grad`` with ``pre_hook`` on every layer of
    ``types`` and every BatchNorm and ``post_hook`` on every layer of ``types``; the hooks
    are removed and the train/eval flags restored afterwards."""
    handles = []
    modes = {m: m.training for m in model.modules()}
    try:
        for module in model.modules():
            if isinstance(module, types) or isinstance(module, _BatchNorm):
                handles.append(module.register_forward_pre_hook(pre_hook))
                if isinstance(module, types):
                    handles.append(module.register_forward_hook(post_hook))
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training


# ----------------------------------------------------------------------------- weights
def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite. A finite sum (in float64) proves it, and is
    several times cheaper than ``isfinite`` on large weights; only when the sum is not
    finite (NaN/Inf present, or a float64 overflow) are the entries checked one by one."""
    if not t.is_floating_point() and not t.is_complex():
        return True
    total = t.sum(dtype=torch.complex128 if t.is_complex() else torch.float64)
    return bool(torch.isfinite(total)) or bool(torch.isfinite(t).all())


def bn_scale(bn: nn.Module) -> torch.Tensor:
    """Per-channel multiplier of an eval-mode BatchNorm: ``gamma / sqrt(running_var + eps)``
    (``gamma`` = 1 without affine parameters)."""
    if not isinstance(bn, _BatchNorm) or bn.running_var is None:
        raise ConfigError(f"cannot fold {type(bn).__name__}: only BatchNorm layers with running statistics fold into a layer")
    scale = 1.0 / torch.sqrt(bn.running_var.detach().to(torch.float64) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().to(torch.float64)
    return scale


def effective_weight(module: nn.Module, bn: "nn.Module | torch.Tensor | None" = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The layer's weight (cast to ``dtype``), each output channel scaled by the folded
    BatchNorm ``bn`` (a BN module or a per-output-channel scale tensor)."""
    if not isinstance(module, LINEAR_TYPES):
        raise ConfigError(f"singular values are defined here for nn.Conv2d and nn.Linear, not {type(module).__name__}: choose such a layer")
    w = module.weight.detach().to(dtype)
    if bn is not None:
        scale = bn if isinstance(bn, torch.Tensor) else bn_scale(bn)
        scale = scale.detach().to(device=w.device, dtype=dtype).reshape(-1)
        if scale.numel() != w.shape[0]:
            raise ConfigError(f"cannot fold a BatchNorm of {scale.numel()} channels into a layer with {w.shape[0]} outputs: fold the BN that follows the layer")
        w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    return w


def reshape_matrices(weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """The kernel as ``groups`` matrices ``(groups, C_out/g, C_in/g·kh·kw)`` (a Linear
    weight ``(out, in)`` is returned as ``(1, out, in)``)."""
    c_out = weight.shape[0]
    return weight.reshape(groups, c_out // groups, -1)


def svdvals(blocks: torch.Tensor, gram: bool = True) -> torch.Tensor:
    """Singular values of a batch of real or complex matrices ``(..., m, n)`` ->
    ``(..., min(m, n))``, descending, as a CPU tensor of the matching real dtype.

    Each matrix ``A`` is decomposed by the cheaper of two LAPACK value-only routes
    that is accurate enough for it:

    * the Hermitian form: ``sigma = sqrt(eigvalsh(G))`` of the Gram matrix ``G = AᴴA``
      of the smaller side (``AAᴴ`` when ``A`` is wide). Eigenvalues are accurate to
      ~``eps·lambda_max``, so ``sigma_i`` has a relative error of about
      ``eps·kappa_i²`` (``kappa_i = sigma_max / sigma_i``); the values are accepted
      only if ``eps·lambda_max / lambda_min <= GRAM_RTOL`` for the dtype (1e-8 in
      float64, 1e-4 in float32; measured errors are below 0.2 of the estimate), which
      the computed eigenvalues decide reliably because ``lambda_min`` then lies far
      above its own error;
    * otherwise (or with ``gram=False``) the SVD (``gesdd``, relative error
      ~``eps·kappa_i``), for that matrix only.

    Vectors (m or n = 1) are their norm. The batch is split over
    ``torch.get_num_threads()`` worker threads, each running single-threaded LAPACK
    (numpy's), which on CPU is faster than multithreaded LAPACK on one matrix at a
    time for the matrix sizes of conv layers (benchmarks/README.md).
    """
    m, n = blocks.shape[-2:]
    batch = blocks.shape[:-2]
    x = blocks.detach().to("cpu").resolve_conj().numpy().reshape(-1, m, n)
    if min(m, n) == 1:
        out = np.linalg.norm(x.reshape(len(x), -1), axis=1)[:, None]
    else:
        out = _in_parallel(_svdvals_np if gram else _svd_np, x)
    return torch.from_numpy(np.ascontiguousarray(out)).reshape(*batch, min(m, n))


# Largest estimated relative error eps·lambda_max/lambda_min accepted from the Gram route.
GRAM_RTOL = {np.dtype(np.float64): 1e-8, np.dtype(np.float32): 1e-4}


def _gram_svdvals(g: np.ndarray) -> np.ndarray:
    """Singular values ``(B, n)`` (descending) from a stack of Gram matrices ``(B, n, n)``;
    a row is NaN where the Gram route is not accurate enough (:data:`GRAM_RTOL`)."""
    lam = np.linalg.eigvalsh(g)  # ascending
    rtol = GRAM_RTOL.get(lam.dtype, 1e-8)
    ok = np.finfo(lam.dtype).eps * lam[:, -1] <= rtol * lam[:, 0]
    s = np.sqrt(np.maximum(lam[:, ::-1], 0))
    s[~ok] = np.nan
    return s


def _svd_np(x: np.ndarray) -> np.ndarray:
    return np.linalg.svd(x, compute_uv=False)


def _svdvals_np(x: np.ndarray) -> np.ndarray:
    """:func:`svdvals` of a stack ``(B, m, n)`` in numpy, in the calling thread."""
    if x.shape[-2] < x.shape[-1]:
        x = x.swapaxes(-1, -2)  # tall: the Gram matrix is the small n x n one
    xh = x.conj().swapaxes(-1, -2) if np.iscomplexobj(x) else x.swapaxes(-1, -2)
    s = _gram_svdvals(xh @ x)
    bad = np.isnan(s[:, 0])
    if bad.any():
        s[bad] = _svd_np(x[bad])
    return s


def parallel_map(fn, items: list) -> list:
    """``[fn(item) for item in items]`` on up to ``torch.get_num_threads()`` worker
    threads, BLAS/LAPACK limited to one thread each (numpy's LAPACK releases the GIL)."""
    workers = min(torch.get_num_threads(), len(items))
    if workers <= 1:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _in_parallel(fn, x: np.ndarray) -> np.ndarray:
    """``fn`` of a stack ``x``, computed on as many contiguous parts as there are threads."""
    return np.concatenate(parallel_map(fn, np.array_split(x, max(1, min(torch.get_num_threads(), len(x))))))


# ----------------------------------------------------------------------------- fft
def half_spectrum(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One representative ``(u, v)`` of every pair of frequencies ``{(u, v), (-u, -v)}``
    of an ``h x w`` DFT, and its multiplicity (2, or 1 when ``(u, v) = (-u, -v)`` mod
    ``(h, w)``). Columns ``0 < v < w/2`` are all representatives; in the self-paired
    columns ``v = 0`` (and ``v = w/2`` for even ``w``) only ``u <= h/2`` are."""
    us = torch.arange(h).repeat_interleave(w // 2 + 1)
    vs = torch.arange(w // 2 + 1).repeat(h)
    self_v = (2 * vs) % w == 0
    mirror_u = (-us) % h
    keep = ~self_v | (us <= mirror_u)
    mult = torch.where(self_v & (us == mirror_u), 1, 2)
    return us[keep], vs[keep], mult[keep]


def _phase(us: torch.Tensor, vs: torch.Tensor, da: torch.Tensor, db: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``2π (u·da/H + v·db/W)`` for frequencies ``(us, vs)`` (F) and integer input-grid
    offsets ``(da, db)`` (D): float64 ``(F, D)``, each term reduced mod 1 turn exactly
    in integers before scaling, so large offsets lose no precision."""
    h, w = hw
    pa = (us[:, None] * da[None, :]) % h
    pb = (vs[:, None] * db[None, :]) % w
    return 2 * math.pi * (pa.double() / h + pb.double() / w)


def _taps(weight: torch.Tensor, dilation: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Input-grid offsets ``(a·dh, b·dw)`` of the kernel's ``kh·kw`` taps, row-major."""
    _, _, kh, kw = weight.shape
    da = (torch.arange(kh) * dilation[0]).repeat_interleave(kw)
    db = (torch.arange(kw) * dilation[1]).repeat(kh)
    return da, db


def _dft(theta: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """``sum_d exp(-i theta[f, d]) · flat[d]`` for real ``flat`` ``(D, N)``: complex
    ``(F, N)`` in its precision, written in place from one product with ``[cos; sin]``
    (one pass over ``flat``)."""
    th = theta.astype(flat.dtype)
    cs = np.concatenate([np.cos(th), np.sin(th)]) @ flat
    out = np.empty((len(th), flat.shape[1]), np.complex128 if flat.dtype == np.float64 else np.complex64)
    out.real = cs[: len(th)]
    out.imag = -cs[len(th):]
    return out


def conv_frequency_matrices(weight: torch.Tensor, hw: tuple[int, int], us: torch.Tensor, vs: torch.Tensor,
                            dilation: tuple[int, int] = (1, 1), groups: int = 1) -> torch.Tensor:
    """``A(u, v)`` of a (real) conv kernel ``(C_out, C_in/g, kh, kw)`` at the frequencies
    ``(us[f], vs[f])`` of an ``hw`` input grid: complex ``(F, g, C_out/g, C_in/g)``,
    ``A = sum_{a,b} W[..., a, b] exp(-2πi (u·a·dh/H + v·b·dw/W))``, in the weight's
    precision (float32 -> complex64, float64 -> complex128)."""
    c_out, c_in_g, kh, kw = weight.shape
    taps = weight.detach().cpu().permute(2, 3, 0, 1).reshape(kh * kw, -1).numpy()
    a = _dft(_phase(us, vs, *_taps(weight, dilation), hw).numpy(), taps)
    return torch.from_numpy(a).reshape(len(us), groups, c_out // groups, c_in_g)


def kernel_autocorrelation(weight: torch.Tensor, dilation: tuple[int, int] = (1, 1), groups: int = 1):
    """The Gram matrices of all frequencies in one: ``A(u,v)ᴴA(u,v) = sum_d
    exp(-2πi (u·da_d/H + v·db_d/W)) · G_d`` with real ``G_d = sum_{l - k = d} T_kᵀ T_l``
    over pairs of taps ``k, l`` whose input-grid offsets differ by ``d``, where
    ``T_k`` is tap ``k``'s ``C_out/g x C_in/g`` matrix — transposed when it is wide,
    so that the Gram matrix is the smaller one (``A Aᴴ``, same nonzero spectrum).

    Returns ``(da, db, G)``: the ``D`` distinct offsets and ``G`` ``(D, g, n, n)``,
    ``n = min(C_out, C_in)/g``. Costs ``K(K+1)/2`` small matrix products for ``K``
    taps, independent of the input size."""
    c_out, c_in_g, kh, kw = weight.shape
    taps = weight.permute(2, 3, 0, 1).reshape(kh * kw, groups, c_out // groups, c_in_g)
    if c_out // groups < c_in_g:
        taps = taps.mT
    da, db = _taps(weight, dilation)
    pairs = torch.stack([(da[None, :] - da[:, None]).reshape(-1), (db[None, :] - db[:, None]).reshape(-1)], 1)
    offsets, index = torch.unique(pairs, dim=0, return_inverse=True)
    index = index.reshape(kh * kw, kh * kw)
    grams = taps.new_zeros(len(offsets), *taps.shape[1:2], taps.shape[-1], taps.shape[-1])
    for k in range(kh * kw):
        prod = taps[k].mT @ taps[k:]  # (K - k, g, n, n): T_kᵀ T_l for l >= k
        grams.index_add_(0, index[k, k:], prod)
        grams.index_add_(0, index[k + 1:, k], prod[1:].mT)  # T_lᵀ T_k = (T_kᵀ T_l)ᵀ
    return offsets[:, 0], offsets[:, 1], grams


def fft_singular_values(weight: torch.Tensor, hw: tuple[int, int], dilation: tuple[int, int] = (1, 1), groups: int = 1) -> torch.Tensor:
    """All ``H·W·min(C_out/g, C_in/g)·g`` singular values (descending) of the circular,
    stride-1 convolution with kernel ``weight`` on ``H x W`` inputs (module docstring),
    in the weight's precision, on the CPU.

    Each frequency's values come from the eigenvalues of its Gram matrix, built for
    all frequencies at once as the DFT of the kernel's autocorrelation
    (:func:`kernel_autocorrelation`) when that is cheaper than forming ``AᴴA`` per
    frequency; frequencies whose Gram matrix is too ill-conditioned for ~1e-8 relative
    accuracy (:data:`GRAM_RTOL`) are decomposed by the SVD of ``A(u, v)`` instead."""
    c_out, c_in_g, kh, kw = weight.shape
    weight = weight.detach().cpu()
    if kh * kw == 1:  # a 1x1 kernel: A(u, v) = W at every frequency
        s = svdvals(reshape_matrices(weight, groups)).reshape(-1)
        return torch.sort(s.repeat(hw[0] * hw[1]), descending=True).values
    us, vs, mult = half_spectrum(*hw)
    if (kh * kw) ** 2 > 8 * len(us):  # few frequencies, many taps: A(u, v) and its Gram per frequency
        values = torch.cat([svdvals(conv_frequency_matrices(weight, hw, us[sl], vs[sl], dilation, groups)).flatten(1)
                            for sl in _chunks(len(us), c_out * c_in_g)])
    else:
        values = torch.from_numpy(_autocorrelation_svdvals(weight, hw, us, vs, dilation, groups))
    out = values.repeat_interleave(mult, dim=0).reshape(-1)
    return torch.sort(out, descending=True).values


def _autocorrelation_svdvals(weight, hw, us, vs, dilation, groups) -> np.ndarray:
    """``(F, g·n)`` singular values of the frequencies ``(us, vs)`` from their Gram
    matrices, each worker building (DFT of the autocorrelation) and decomposing a few
    frequencies at a time while they are in cache; frequencies the guard rejects are
    redone by the SVD of ``A(u, v)``."""
    da, db, grams = kernel_autocorrelation(weight, dilation, groups)
    n = grams.shape[-1]
    theta = _phase(us, vs, da, db, hw).numpy()
    flat = grams.reshape(len(grams), -1).numpy()

    def block(sl: slice) -> np.ndarray:
        g = _dft(theta[sl], flat)
        return _gram_svdvals(g.reshape(-1, n, n)).reshape(len(g), -1)

    # Frequencies per task: enough that one pass over the autocorrelation (D blocks) costs
    # no more than writing the task's Gram matrices (>= D/2), at least ~4 MB of them, but
    # at most half of each worker's share so that the threads stay balanced.
    workers = max(1, torch.get_num_threads())
    step = max(-(-len(flat) // 2), (1 << 18) // flat.shape[1], 1)
    step = max(1, min(step, -(-len(us) // (2 * workers))))
    s = np.concatenate(parallel_map(block, [slice(i, i + step) for i in range(0, len(us), step)]))
    bad = np.flatnonzero(np.isnan(s).any(axis=1))
    for chunk in _chunks(len(bad), weight.shape[0] * weight.shape[1]):  # too ill-conditioned: SVD of A(u, v)
        idx = torch.from_numpy(bad[chunk])
        a = conv_frequency_matrices(weight, hw, us[idx], vs[idx], dilation, groups)
        s[bad[chunk]] = svdvals(a, gram=False).reshape(len(idx), -1).numpy()
    return s


def _chunks(n: int, per_item: int) -> list[slice]:
    """Slices of ``range(n)`` holding at most ``_FFT_CHUNK_ELEMENTS`` complex entries."""
    step = max(1, _FFT_CHUNK_ELEMENTS // max(per_item, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


# ----------------------------------------------------------------------------- power
def conv_apply(module: nn.Conv2d, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The bias-free linear part of ``module`` with kernel ``weight`` applied to ``x``
    (N, C, H, W): its stride, padding (zeros or ``padding_mode``), dilation, groups."""
    if module.padding_mode != "zeros":
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        return F.conv2d(x, weight, None, module.stride, 0, module.dilation, module.groups)
    return F.conv2d(x, weight, None, module.stride, module.padding, module.dilation, module.groups)


def top_singular_values(matvec, rmatvec, shape: tuple[int, int], k: int, *, seed: int = 0) -> torch.Tensor:
    """Top ``k`` singular values (descending, float64) of the linear operator of
    ``shape = (m, n)`` given by ``matvec`` (R^n -> R^m) and ``rmatvec`` (its adjoint),
    by ARPACK (``scipy.sparse.linalg.svds``, start vector from ``seed``, ``tol=0``).

    A tiny operator (``min(m, n) <= 32``), or one of at most 2^24 entries when ``k``
    asks for (nearly) all values, is built densely — by applying the operator (or its
    adjoint, whichever side is smaller) to unit vectors — and fully decomposed.
    Otherwise at most ``min(m, n) - 1`` values are returned (ARPACK's limit)."""
    from scipy.sparse.linalg import LinearOperator, svds

    m, n = shape
    small = min(m, n)
    if small <= _DENSE_MAX_DIM or (k >= small - 1 and m * n <= _DENSE_MAX_ENTRIES):
        if n <= m:
            mat = np.stack([matvec(e) for e in np.eye(n)], axis=1)
        else:
            mat = np.stack([rmatvec(e) for e in np.eye(m)], axis=0)
        s = torch.linalg.svdvals(torch.as_tensor(mat, dtype=torch.float64))
        return s[: min(k, small)]
    op = LinearOperator((m, n), matvec=matvec, rmatvec=rmatvec, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(small)
    s = svds(op, k=min(k, small - 1), v0=v0, return_singular_vectors=False, tol=0)
    return torch.sort(torch.as_tensor(np.abs(s), dtype=torch.float64), descending=True).values


def power_singular_values(module: nn.Module, weight: torch.Tensor, input_shape: Sequence[int] | None, k: int, seed: int = 0) -> torch.Tensor:
    """Top-``k`` singular values of the true operator of ``module`` (kernel ``weight``,
    float64) on one input of ``input_shape``."""
    if isinstance(module, nn.Linear):
        return svdvals(weight[None])[0][:k]
    shape = tuple(int(d) for d in input_shape)
    weight = weight.to(torch.float64)
    device = weight.device
    x0 = torch.zeros((1, *shape), dtype=torch.float64, device=device, requires_grad=True)
    with torch.enable_grad():
        y0 = conv_apply(module, weight, x0)

    def matvec(v):
        x = torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float64, device=device).reshape(x0.shape)
        with torch.no_grad():
            return conv_apply(module, weight, x).reshape(-1).cpu().numpy()

    def rmatvec(v):
        y = torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float64, device=device).reshape(y0.shape)
        (g,) = torch.autograd.grad(y0, x0, grad_outputs=y, retain_graph=True)
        return g.reshape(-1).cpu().numpy()

    return top_singular_values(matvec, rmatvec, (y0.numel(), x0.numel()), k, seed=seed)


# ----------------------------------------------------------------------------- entry point
def singular_values(
    module: nn.Module,
    input_shape: Sequence[int] | None = None,
    method: Method = "reshape",
    *,
    k: int = 6,
    bn: "nn.Module | torch.Tensor | None" = None,
) -> torch.Tensor:
    """Singular values of ``module`` (``nn.Conv2d`` or ``nn.Linear``), 1-D float64
    tensor, descending, on the CPU.

    ``method``: ``"reshape"`` (kernel as a ``C_out x C_in/g·kh·kw`` matrix, all values),
    ``"fft"`` (exact, all ``H·W·min(C_out, C_in)`` values of the circular stride-1
    convolution on one input of ``input_shape = (C, H, W)``), ``"power"`` (top ``k``
    values of the layer's true operator with its stride and padding on inputs of
    ``input_shape``); see the module docstring. ``bn``: a BatchNorm (or per-channel
    scale) to fold in. Everything runs in float64; ``reshape``/``fft`` values have a
    relative error of at most ~1e-8 each (:func:`svdvals`), ``power`` ARPACK's ``tol=0``.

    Raises ProbeError when the (folded) weight holds NaN or Inf.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown singular value method {method!r}: use one of {', '.join(METHODS)}")
    is_conv = isinstance(module, nn.Conv2d)
    weight = effective_weight(module, bn)
    if not all_finite(weight):
        raise ProbeError("the layer's weight (with any folded BatchNorm) holds NaN or Inf: its singular values are undefined")
    if not is_conv or method == "reshape":
        if method == "power":
            return power_singular_values(module, weight, input_shape, k)
        groups = module.groups if is_conv else 1
        s = svdvals(reshape_matrices(weight, groups)).reshape(-1)
        return torch.sort(s, descending=True).values
    if input_shape is None or len(input_shape) != 3:
        raise ConfigError(f"method {method!r} needs the layer's input shape (C, H, W), got {input_shape!r}: pass input_shape")
    if int(input_shape[0]) != module.in_channels:
        raise ConfigError(f"input_shape {tuple(input_shape)} has {input_shape[0]} channels but the layer takes {module.in_channels}: pass the layer's own input shape")
    if method == "fft":
        hw = (int(input_shape[1]), int(input_shape[2]))
        return fft_singular_values(weight, hw, tuple(module.dilation), module.groups)
    if k < 1:
        raise ConfigError(f"k must be at least 1 for method 'power', got {k}")
    return power_singular_values(module, weight, input_shape, k)
