"""Ground truth for armetrics.linalg: every method against the SVD of a dense Jacobian
built independently (torch.func.jacrev of the layer itself, or of an explicitly
circularly padded stride-1 convolution)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from armetrics import linalg
from armetrics.errors import ConfigError, ProbeError


# ----------------------------------------------------------------------------- ground truth helpers
def jacobian(fn, shape) -> torch.Tensor:
    """Dense Jacobian (outputs x inputs) of ``fn`` on one float64 input of ``shape``."""
    x = torch.zeros(shape, dtype=torch.float64)
    jac = torch.func.jacrev(fn)(x)
    return jac.reshape(-1, x.numel())


def circular_stride1_jacobian(conv: nn.Conv2d, shape, bn: nn.Module | None = None) -> torch.Tensor:
    """Jacobian of the circular, stride-1 version of ``conv`` on (C, H, W) inputs: the
    input is wrapped by explicit index arithmetic (works for kernels larger than the
    input too) and convolved without padding."""
    _, h, w = shape
    eh = conv.dilation[0] * (conv.kernel_size[0] - 1)
    ew = conv.dilation[1] * (conv.kernel_size[1] - 1)
    rows = torch.arange(-(eh // 2), h + eh - eh // 2) % h
    cols = torch.arange(-(ew // 2), w + ew - ew // 2) % w
    weight = conv.weight.detach().double()

    def fn(x):
        y = F.conv2d(x[:, rows][:, :, cols][None], weight, None, 1, 0, conv.dilation, conv.groups)[0]
        if bn is not None:
            y = (y - bn.running_mean.double()[:, None, None]) / torch.sqrt(bn.running_var.double()[:, None, None] + bn.eps)
            y = y * bn.weight.double()[:, None, None] + bn.bias.double()[:, None, None]
        return y

    return jacobian(fn, shape)


def module_jacobian(module: nn.Module, shape) -> torch.Tensor:
    """Jacobian of the module as it runs (its stride, padding, eval-mode BN)."""
    module = module.double().eval()
    return jacobian(lambda x: module(x[None])[0], shape)


def svd(mat: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(mat)


def random_bn(channels: int, seed: int = 0) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=g) * 2 - 0.5)  # includes negative gammas
        bn.bias.copy_(torch.randn(channels, generator=g))
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) * 2 + 0.1)
    return bn


# (C_in, C_out, kernel, stride, padding, groups, dilation, input (C, H, W))
CASES = [
    (3, 4, 3, 1, 1, 1, 1, (3, 5, 7)),            # non-square input
    (4, 6, 3, 2, 1, 2, 1, (4, 6, 5)),            # stride 2, two groups
    (4, 4, 3, 1, 0, 4, 2, (4, 8, 6)),            # depthwise, dilation 2 (not coprime to H, W)
    (4, 8, 3, 3, 2, 4, (1, 2), (4, 6, 8)),       # depthwise x2 multiplier, stride 3, anisotropic dilation
    (2, 3, (2, 3), 1, 0, 1, 1, (2, 4, 5)),       # non-square, even kernel
    (3, 5, 5, 1, 2, 1, 1, (3, 3, 2)),            # kernel larger than the input: taps wrap around
    (6, 2, 1, 2, 0, 2, 1, (6, 4, 4)),            # 1x1 conv, C_out < C_in, groups
]
IDS = ["nonsquare", "stride2-groups", "depthwise-dil2", "depthwise-mult-stride3", "even-kernel", "wrap", "1x1-groups"]


def make_conv(case, seed=0, **kw) -> nn.Conv2d:
    cin, cout, k, stride, pad, groups, dil, _ = case
    torch.manual_seed(seed)
    return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, groups=groups, dilation=dil, **kw).eval()


# ----------------------------------------------------------------------------- fft
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fft_equals_dense_circular_stride1_operator(case):
    conv, shape = make_conv(case), case[-1]
    ref = svd(circular_stride1_jacobian(conv, shape))
    got = linalg.singular_values(conv, shape, "fft")
    assert got.dtype == torch.float64 and got.shape == ref.shape
    assert torch.all(got[:-1] >= got[1:]), "not descending"
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12 * float(ref[0]))


def test_fft_is_the_real_layer_for_circular_padding_stride1():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, padding=1, padding_mode="circular").eval()
    ref = svd(module_jacobian(conv, (3, 6, 4)))
    got = linalg.singular_values(conv, (3, 6, 4), "fft")
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (3, 4), (4, 3), (5, 5), (6, 8), (7, 1)])
def test_half_spectrum_covers_each_frequency_once(hw):
    h, w = hw
    us, vs, mult = linalg.half_spectrum(h, w)
    assert int(mult.sum()) == h * w
    seen = torch.zeros(h, w, dtype=torch.long)
    for u, v, m in zip(us.tolist(), vs.tolist(), mult.tolist()):
        seen[u, v] += 1
        mu, mv = (-u) % h, (-v) % w
        if (mu, mv) != (u, v):
            assert m == 2
            seen[mu, mv] += 1
        else:
            assert m == 1
    assert torch.all(seen == 1)


# ----------------------------------------------------------------------------- power
POWER_CASES = [
    (3, 4, 3, 2, 1, 1, 1, (3, 10, 9)),           # stride 2, zero padding, non-square
    (4, 4, 3, 1, 2, 2, 2, (4, 7, 6)),            # groups, dilation, padding 2
    (4, 8, 3, 1, 1, 4, 1, (4, 5, 6)),            # depthwise x2
]


@pytest.mark.parametrize("case", POWER_CASES, ids=["stride2", "groups-dil", "depthwise"])
def test_power_top_k_equals_dense_svd_of_true_layer(case):
    conv, shape = make_conv(case, seed=2), case[-1]
    jac = module_jacobian(conv, shape)
    assert min(jac.shape) > linalg._DENSE_MAX_DIM  # the iterative (ARPACK) path is exercised
    ref = svd(jac)
    got = linalg.singular_values(conv, shape, "power", k=5)
    assert got.dtype == torch.float64 and got.shape == (5,)
    torch.testing.assert_close(got, ref[:5], rtol=1e-8, atol=1e-12)


def test_power_respects_padding_mode_and_matches_fft_for_circular_stride1():
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular").eval()
    shape = (3, 6, 5)
    ref = svd(module_jacobian(conv, shape))
    got = linalg.singular_values(conv, shape, "power", k=4)
    fft = linalg.singular_values(conv, shape, "fft")
    torch.testing.assert_close(got, ref[:4], rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(got, fft[:4], rtol=1e-8, atol=1e-12)


def test_power_tiny_operator_falls_back_to_dense_and_linear_is_exact():
    torch.manual_seed(4)
    conv = nn.Conv2d(2, 3, 3, stride=2).eval()  # 2x5x5 -> 3x2x2: 12 x 50
    ref = svd(module_jacobian(conv, (2, 5, 5)))
    got = linalg.singular_values(conv, (2, 5, 5), "power", k=20)  # more than exist: all 12 (built via the adjoint)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    wide = nn.Conv2d(1, 8, 3, padding=1).eval()  # 1x4x4 -> 8x4x4: 128 x 16, built via the forward
    ref = svd(module_jacobian(wide, (1, 4, 4)))
    torch.testing.assert_close(linalg.singular_values(wide, (1, 4, 4), "power", k=3), ref[:3], rtol=1e-10, atol=1e-12)
    fc = nn.Linear(7, 5)
    got = linalg.singular_values(fc, None, "power", k=3)
    torch.testing.assert_close(got, svd(fc.weight.detach().double())[:3])


# ----------------------------------------------------------------------------- reshape
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reshape_equals_jacobian_at_one_output_pixel(case):
    """The reshaped kernel is the Jacobian of the unpadded conv on an input exactly one
    (dilated) kernel large: one output pixel. Its extra singular values are zeros."""
    cin, cout, k, _, _, groups, dil, _ = case
    conv = make_conv(case)
    one_pixel = nn.Conv2d(cin, cout, k, padding=0, groups=groups, dilation=dil, bias=False)
    with torch.no_grad():
        one_pixel.weight.copy_(conv.weight)
    eh = one_pixel.dilation[0] * (one_pixel.kernel_size[0] - 1) + 1
    ew = one_pixel.dilation[1] * (one_pixel.kernel_size[1] - 1) + 1
    ref = svd(module_jacobian(one_pixel, (cin, eh, ew)))
    got = linalg.singular_values(conv, method="reshape")
    assert got.dtype == torch.float64
    n = len(got)
    assert n == groups * min(cout // groups, cin // groups * one_pixel.weight[0].numel() // (cin // groups))
    torch.testing.assert_close(got, ref[:n], rtol=1e-10, atol=1e-12)
    assert torch.all(ref[n:].abs() < 1e-12)


def test_reshape_ungrouped_is_svdvals_of_reshaped_kernel():
    torch.manual_seed(5)
    conv = nn.Conv2d(5, 7, (3, 2))
    ref = torch.linalg.svdvals(conv.weight.detach().double().reshape(7, 5 * 3 * 2))
    torch.testing.assert_close(linalg.singular_values(conv), ref, rtol=1e-12, atol=0)
    fc = nn.Linear(6, 4)
    for method in ("reshape", "fft"):
        torch.testing.assert_close(linalg.singular_values(fc, None, method), svd(fc.weight.detach().double()),
                                   rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- relations between methods
@pytest.mark.parametrize("case", CASES[:4], ids=IDS[:4])
def test_relations_between_methods(case):
    """Parseval: sum sigma_fft^2 = H*W * sum sigma_reshape^2 (= H*W*||W||_F^2).
    Bounds: the true layer (zero padding, stride) is a row selection of the circular
    stride-1 conv on the grid padded by the kernel extent, so
    sigma_max(power) <= sigma_max(fft on that grid) <= sqrt(kh*kw) * sigma_max(reshape)."""
    conv, shape = make_conv(case, seed=11), case[-1]
    c, h, w = shape
    fft = linalg.singular_values(conv, shape, "fft")
    reshape = linalg.singular_values(conv, method="reshape")
    torch.testing.assert_close((fft**2).sum(), h * w * (reshape**2).sum(), rtol=1e-10, atol=0)
    eh = conv.dilation[0] * (conv.kernel_size[0] - 1)
    ew = conv.dilation[1] * (conv.kernel_size[1] - 1)
    big = linalg.singular_values(conv, (c, h + eh, w + ew), "fft")
    top = linalg.singular_values(conv, shape, "power", k=1)
    k = conv.kernel_size[0] * conv.kernel_size[1]
    assert top[0] <= big[0] * (1 + 1e-10) <= math.sqrt(k) * reshape[0] * (1 + 1e-10)


# ----------------------------------------------------------------------------- BatchNorm folding
def test_bn_fold_fft_equals_dense_conv_then_bn():
    torch.manual_seed(6)
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular").eval()
    bn = random_bn(4)
    shape = (3, 5, 4)
    ref = svd(module_jacobian(nn.Sequential(conv, bn), shape))
    torch.testing.assert_close(ref, svd(circular_stride1_jacobian(conv, shape, bn)), rtol=1e-10, atol=1e-12)
    got = linalg.singular_values(conv, shape, "fft", bn=bn)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    unfolded = linalg.singular_values(conv, shape, "fft")
    assert not torch.allclose(unfolded, got)  # folding changed something


def test_bn_fold_power_equals_dense_strided_conv_then_bn():
    torch.manual_seed(7)
    conv = nn.Conv2d(3, 6, 3, stride=2, padding=1).eval()
    bn = random_bn(6, seed=1)
    shape = (3, 9, 10)
    ref = svd(module_jacobian(nn.Sequential(conv, bn), shape))
    got = linalg.singular_values(conv, shape, "power", k=4, bn=bn)
    torch.testing.assert_close(got, ref[:4], rtol=1e-8, atol=1e-12)


def test_bn_fold_reshape_equals_one_pixel_jacobian_of_conv_then_bn():
    torch.manual_seed(8)
    conv = nn.Conv2d(2, 5, 3, padding=0, bias=False).eval()
    bn = random_bn(5, seed=2)
    ref = svd(module_jacobian(nn.Sequential(conv, bn), (2, 3, 3)))
    got = linalg.singular_values(conv, method="reshape", bn=bn)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    # a BN without affine parameters and a scale tensor fold the same way
    plain = nn.BatchNorm2d(5, affine=False).eval()
    plain.running_var.copy_(bn.running_var)
    torch.testing.assert_close(linalg.singular_values(conv, bn=plain), linalg.singular_values(conv, bn=linalg.bn_scale(plain)))


# ----------------------------------------------------------------------------- tracing
class PreAct(nn.Module):
    """Module order suggests conv->bn, but the forward runs bn BEFORE conv; the second
    conv's output passes an in-place ReLU before bn2; the third feeds a residual add
    before bn3; only conv4 -> bn4 and fc -> bn5 are direct."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.bn2 = nn.BatchNorm2d(3)
        self.conv3 = nn.Conv2d(3, 3, 1)
        self.bn3 = nn.BatchNorm2d(3)
        self.bn4 = nn.BatchNorm2d(4)
        self.conv4 = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 2 * 3, 5)
        self.bn5 = nn.BatchNorm1d(5)

    def forward(self, x):
        x = self.conv(self.bn(x))
        x = self.bn2(self.relu(self.conv2(x)))
        x = self.bn3(x + self.conv3(x))
        x = self.bn4(self.conv4(x))
        return self.bn5(self.fc(x.flatten(1)))


def test_trace_finds_direct_bn_only_and_input_shapes_in_forward_order():
    model = PreAct().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    traced = linalg.trace_layers(model, (3, 6, 7))
    assert [t.name for t in traced] == ["conv", "conv2", "conv3", "conv4", "fc"]
    assert {t.name: t.bn_name for t in traced} == {"conv": None, "conv2": None, "conv3": None, "conv4": "bn4", "fc": "bn5"}
    assert {t.name: t.input_shape for t in traced} == {
        "conv": (3, 6, 7), "conv2": (3, 6, 7), "conv3": (3, 6, 7), "conv4": (3, 6, 7), "fc": (24,)}
    assert traced[3].output_shape == (4, 2, 3)
    assert model.training and all(m.training for m in model.modules())  # mode restored
    for k, v in model.state_dict().items():  # running statistics untouched
        assert torch.equal(v, before[k]), k


def test_linear_bn1d_fold_equals_dense_jacobian():
    torch.manual_seed(9)
    fc, bn = nn.Linear(6, 4), nn.BatchNorm1d(4).eval()
    with torch.no_grad():
        bn.weight.uniform_(-1, 2)
        bn.running_var.uniform_(0.2, 3)
    net = nn.Sequential(fc, bn).double().eval()
    ref = svd(jacobian(lambda x: net(x[None])[0], (6,)))
    torch.testing.assert_close(linalg.singular_values(fc, bn=bn), ref, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- errors
def test_nonfinite_weight_and_bad_arguments_raise_typed_errors():
    conv = nn.Conv2d(2, 2, 3)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ProbeError, match="NaN or Inf"):
        linalg.singular_values(conv)
    good = nn.Conv2d(2, 2, 3)
    with pytest.raises(ConfigError, match="input shape"):
        linalg.singular_values(good, None, "fft")
    with pytest.raises(ConfigError, match="channels"):
        linalg.singular_values(good, (3, 8, 8), "fft")
    with pytest.raises(ConfigError, match="unknown"):
        linalg.singular_values(good, method="svd")
    with pytest.raises(ConfigError, match="Conv2d"):
        linalg.singular_values(nn.ReLU())


# ----------------------------------------------------------------------------- fast routes and their guard
def with_singular_values(sigma, m, n, *, complex_=False, seed=0) -> torch.Tensor:
    """An m x n matrix U diag(sigma) Vᴴ with exactly the given singular values (the
    ground truth), from random orthonormal/unitary U, V."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_ else torch.float64
    u, _ = torch.linalg.qr(torch.randn(m, len(sigma), generator=g, dtype=dtype))
    v, _ = torch.linalg.qr(torch.randn(n, len(sigma), generator=g, dtype=dtype))
    return (u * torch.as_tensor(sigma).to(dtype)) @ v.mH


def count_svd_calls(monkeypatch) -> list[int]:
    calls = []
    real = linalg._svd_np

    def counting(x):
        calls.append(len(x))
        return real(x)

    monkeypatch.setattr(linalg, "_svd_np", counting)
    return calls


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("shape", [(12, 12), (20, 9), (9, 20)], ids=["square", "tall", "wide"])
def test_svdvals_takes_the_gram_route_only_where_it_is_accurate(monkeypatch, complex_, shape):
    """Matrices with known singular values and condition numbers 1e1..1e12 plus a
    singular one: every value must come back to 1e-8 relative (1e-14 absolute for the
    exact zero). The Gram route alone would miss that from kappa ~ 1e4 (its error is
    ~eps·kappa²), so the test fails if the guard lets it through; and the SVD must not
    run for the well-conditioned matrices (else the fast route is dead code)."""
    m, n = shape
    r = min(m, n)
    conds = [1e1, 1e3, 1e6, 1e12, math.inf]
    sigmas = []
    for kappa in conds:
        s = torch.logspace(0, -math.log10(kappa), r, dtype=torch.float64) if math.isfinite(kappa) else \
            torch.cat([torch.linspace(2, 1, r - 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
        sigmas.append(s)
    mats = torch.stack([with_singular_values(s, m, n, complex_=complex_, seed=i) for i, s in enumerate(sigmas)])
    calls = count_svd_calls(monkeypatch)
    got = linalg.svdvals(mats)
    assert got.dtype == torch.float64 and got.shape == (len(conds), r)
    truth = torch.stack(sigmas)
    torch.testing.assert_close(got, truth, rtol=1e-8, atol=1e-14)
    # kappa 1e1 and 1e3 pass the guard (eps·kappa² <= 1e-8); 1e6, 1e12 and the singular one do not
    assert sum(calls) == 3, calls


def test_svdvals_float32_meets_1e_4_and_falls_back_past_its_guard(monkeypatch):
    sigmas = [torch.logspace(0, -1, 10, dtype=torch.float64), torch.logspace(0, -3, 10, dtype=torch.float64)]
    mats = torch.stack([with_singular_values(s, 14, 10, seed=i) for i, s in enumerate(sigmas)]).float()
    calls = count_svd_calls(monkeypatch)
    got = linalg.svdvals(mats)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), torch.stack(sigmas), rtol=1e-4, atol=0)
    assert sum(calls) == 1  # kappa 1e3: eps32·kappa² ~ 0.1 > 1e-4, the SVD's ~1e-4 is kept


def test_svdvals_is_the_same_on_one_or_two_threads():
    mats = torch.randn(7, 30, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = linalg.svdvals(mats)
        torch.set_num_threads(2)
        two = linalg.svdvals(mats)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(one, two, rtol=1e-12, atol=0)
    torch.testing.assert_close(one, torch.linalg.svdvals(mats), rtol=1e-10, atol=0)


@pytest.mark.parametrize("case", CASES[:6], ids=IDS[:6])
def test_kernel_autocorrelation_is_the_gram_matrix_of_every_frequency(case):
    """DFT of the autocorrelation == A(u,v)ᴴA(u,v) (or A Aᴴ for wide blocks) built from
    the frequency matrices themselves, at every frequency."""
    conv, (_, h, w) = make_conv(case, seed=4), case[-1]
    weight = conv.weight.detach().double()
    us, vs, _ = linalg.half_spectrum(h, w)
    a = linalg.conv_frequency_matrices(weight, (h, w), us, vs, conv.dilation, conv.groups)
    ref = a.mH @ a if a.shape[-2] >= a.shape[-1] else a @ a.mH
    da, db, grams = linalg.kernel_autocorrelation(weight, conv.dilation, conv.groups)
    got = linalg._dft(linalg._phase(us, vs, da, db, (h, w)).numpy(), grams.reshape(len(grams), -1).numpy())
    got = torch.from_numpy(got).reshape(ref.shape)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12 * float(ref.abs().max()))


@pytest.mark.parametrize("shape", [(4, 6, 5), (4, 2, 2)], ids=["autocorrelation-route", "per-frequency-route"])
def test_fft_with_singular_frequencies_equals_dense_operator(shape):
    """A kernel whose output channels 2 and 3 are equal up to 1e-9: every frequency
    matrix has a singular value ~1e-9·|W|, which the Gram route cannot resolve
    (sqrt(eps)·sigma_max ~ 1e-8): the guard must send those frequencies to the SVD.
    (4, 2, 2): few frequencies for 9 taps, so A(u, v) is built per frequency."""
    torch.manual_seed(12)
    conv = nn.Conv2d(4, 4, 3, bias=False).eval()
    with torch.no_grad():
        conv.weight[3] = conv.weight[2] * (1 + 1e-9)
    ref = svd(circular_stride1_jacobian(conv, shape))
    got = linalg.singular_values(conv, shape, "fft")
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-14 * float(ref[0]))
    assert float(ref[-1]) < 1e-8 * float(ref[0])  # the case really is near-singular
