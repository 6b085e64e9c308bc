"""Data-parallel analysis with ``torch.distributed`` (launched by ``torchrun``).

Each rank streams a contiguous range of whole batches — batch ``b`` holds the same
samples, with the same ``offset`` and so the same seeded randomness, as in a
single-process run. Weight-only probes run once, on rank 0, and their results are
broadcast (data probes may read them). At the end every rank's probe state is
gathered to rank 0 and merged in rank order (= data order), and rank 0 alone
computes and writes the report. Counts, histograms, exact sums and ``cat`` states
merge to exactly the single-process values; quantile sketches merge exactly too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> Dist | None:
    """The running process group (rank, world size), or None when not distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Dist(dist.get_rank(), dist.get_world_size())
    return None


def init_from_env(device: str) -> tuple[Dist | None, str]:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE`` > 1):
    gloo on CPU, NCCL on CUDA (one GPU per local rank). Returns (Dist, device)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return current(), device
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = device.startswith("cuda")
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return current(), device


def shard(n_batches: int, d: Dist | None) -> tuple[int, int]:
    """This rank's contiguous range ``[lo, hi)`` of batch indices."""
    if d is None:
        return 0, n_batches
    base, extra = divmod(n_batches, d.world)
    lo = d.rank * base + min(d.rank, extra)
    return lo, lo + base + (1 if d.rank < extra else 0)


def broadcast(obj, d: Dist):
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist

    box = [obj if d.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, d: Dist) -> list | None:
    """Every rank's ``obj`` as a list on rank 0 (rank order); None elsewhere."""
    import torch.distributed as dist

    out = [None] * d.world if d.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier(d: Dist | None) -> None:
    if d is not None:
        import torch.distributed as dist

        dist.barrier()


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
