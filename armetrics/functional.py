"""Pure kernels shared by the probes, the attacks and the engine (no state, no I/O).

Each function takes and returns tensors (or plain values); shapes are written
``(B, ...)`` for a batch of B samples, ``(B, K)`` for logits over K classes. Probes
call these rather than importing one another (as torchmetrics pairs each metric with
a functional twin).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Literal

import torch
from torch import nn

#: a threat model / perturbation norm: Euclidean, or the largest absolute value
Norm = Literal["L2", "Linf"]
NORMS: tuple[str, ...] = ("L2", "Linf")


# ----------------------------------------------------------------- model outputs
def first_output(out: Any) -> Any:
    """``out[0]`` when a model (or a layer) returns a tuple or list, else ``out`` itself:
    the convention that the first element of a tuple output is the logits/feature map."""
    return out[0] if isinstance(out, (tuple, list)) else out


def twice_differentiable():
    """Context in which a forward pass can be differentiated twice: attention
    (``F.scaled_dot_product_attention``, used by timm's ViT/DeiT/XCiT) runs on its
    ``math`` backend, whose ops all have double backward; the fused flash and
    memory-efficient kernels have none (``aten::_scaled_dot_product_flash_attention_for_cpu_backward``).
    Equal to the fused kernels to float rounding."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def logits(model: nn.Module | Any, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` as a logits tensor (B, K): the first element if the model returns a
    tuple. Call this, not ``model(x)``, on ``Batch.model`` (the user's model, unwrapped so
    that layer names stay those of ``named_modules()``)."""
    return first_output(model(x))


class LogitsModule(nn.Module):
    """``model`` as a module whose forward returns :func:`logits` (for third-party attack
    code that calls ``module(x)``). Its layer names gain a ``model.`` prefix: hook the
    user's model, not this wrapper."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits(self.model, x)


# ----------------------------------------------------------------- classification
def top1_correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Boolean (B,) mask: ``argmax_j logits[i, j] == y[i]`` (ties -> lowest index, as
    ``torch.argmax``; a row with NaN counts as wrong). ``logits`` (B, K), ``y`` (B,)."""
    ok = logits.argmax(dim=1) == y
    return ok & torch.isfinite(logits).all(dim=1)


def logit_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j != y} z_j`` per row in logit units (negative: misclassified, 0: a
    tie), float64, shape (B,). ``logits`` (B, K) with K >= 2, ``y`` (B,)."""
    z = logits.detach().double()
    z_y = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], -math.inf).amax(dim=1)
    return z_y - other


# ----------------------------------------------------------------- norms
def flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm ``||t_i||_2`` over all but the batch dimension: (B, ...) -> (B,),
    in ``t``'s dtype and units."""
    return t.flatten(1).norm(dim=1)


def per_sample_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample ``||t_i||_norm`` over all but the batch dimension, (B, ...) -> (B,), in
    ``t``'s dtype: ``"Linf"`` the largest absolute value (0 for an empty sample), any
    other value the L2 norm (callers check ``norm`` against :data:`NORMS`)."""
    flat = t.flatten(1)
    if norm == "Linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else torch.zeros(flat.shape[0], dtype=t.dtype, device=t.device)
    return flat.norm(dim=1)


# ----------------------------------------------------------------- seeds
def derive_seed(*parts: Any, bits: int = 63) -> int:
    """A seed from ``parts`` (e.g. run seed, sample offset, stream name): the first 8
    bytes of ``sha256(":".join(parts))`` read little-endian, keeping the low ``bits``
    bits (63 for ``torch.Generator``, 31 for libraries that want an int32). Stable
    across processes and platforms, unlike ``hash()``."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << bits) - 1)


def seeded_generator(*parts: Any, device: torch.device | str | None = None) -> torch.Generator:
    """A ``torch.Generator`` (CPU unless ``device``) seeded by :func:`derive_seed` of ``parts``."""
    g = torch.Generator() if device is None else torch.Generator(device=device)
    return g.manual_seed(derive_seed(*parts))
