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

import contextlib
import math
import os
import signal
import sys
import threading
from dataclasses import dataclass
from datetime import timedelta

import torch

from .errors import ArmetricsError, ConfigError, first_line


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


ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def join_timeout() -> float:
    """Seconds to wait for every rank to join (``ARMETRICS_DIST_TIMEOUT``, default 60)."""
    text = os.environ.get("ARMETRICS_DIST_TIMEOUT", "60")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"ARMETRICS_DIST_TIMEOUT={text!r} is not a positive number of seconds: e.g. ARMETRICS_DIST_TIMEOUT=60")
    return value


def _env_text() -> str:
    return " ".join(f"{k}={os.environ[k]}" for k in ENV_VARS if k in os.environ)


def init_from_env(device: str) -> tuple[Dist | None, str]:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE`` > 1):
    gloo on CPU, NCCL on CUDA (one GPU per local rank). Returns (Dist, device).

    Joining waits at most :func:`join_timeout` seconds (torch's own default is 30
    minutes): environment variables left over from another job, or a peer that never
    starts, give a one-line error naming the variables. While waiting, SIGINT and
    SIGTERM end the process at once (torch's C++ wait would not return to Python to
    handle them; nothing has been written yet)."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(text)
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={text!r} is not an integer: unset it, or launch with torchrun --nproc-per-node N") from None
    if world <= 1:
        return current(), device
    import torch.distributed as dist

    if not dist.is_initialized():
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise ConfigError(f"WORLD_SIZE={world} asks for a distributed run but {', '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} not set: launch with torchrun --nproc-per-node {world}, "
                              f"or unset WORLD_SIZE for a single process")
        timeout = join_timeout()
        cuda = device.startswith("cuda")
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        try:
            with _default_signals(), _quiet_stderr():
                dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout))
        except (RuntimeError, ValueError, OSError) as exc:  # DistStoreError / DistNetworkError are RuntimeErrors
            raise ArmetricsError(
                f"could not join the torch.distributed process group within {timeout:g} s ({_env_text()}; "
                f"{first_line(exc, 120)}): start every rank with torchrun --nproc-per-node N, or unset "
                f"{', '.join(k for k in ENV_VARS if k in os.environ)} for a single process") from None
    return current(), device


@contextlib.contextmanager
def _default_signals():
    """SIGINT/SIGTERM kill the process during the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, handler in saved.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _quiet_stderr():
    """torch's C++ store prints stack traces to fd 2 when a connection times out: keep
    them off the terminal unless ``ARMETRICS_DEBUG`` is set (the error says what failed)."""
    if os.environ.get("ARMETRICS_DEBUG"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


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
