"""Build a network without drawing its random initial weights, and check that the
checkpoint then replaced every value that depended on them.

A constructor spends most of its time filling parameters with random numbers
(``kaiming_uniform_``, ``trunc_normal_``, ...) that loading a checkpoint overwrites:
8 of the ~10 s it takes to build RobustBench's ResNeSt-152, more for a WRN-70-16.
:func:`skipping_init` runs a constructor with the in-place *random* fills
(:data:`RANDOM_INPLACE`) not run, so those tensors keep whatever memory they were
given. Everything else the constructor computes runs as usual (buffers from
``arange``, constants, normalisation statistics), and every tensor computed from an
unfilled one is marked too. :func:`recording_writes` then records which tensors the
load copied values into. :meth:`Ledger.complete` is True when every marked tensor the
model still holds (parameters, buffers, tensor attributes) was written by the load;
when one was not (a checkpoint without some randomly initialised parameter, a random
non-persistent buffer), the caller builds the model again the ordinary way. So the
result is always the model that the ordinary build and load give. Marked tensors the
model no longer holds (a layer a constructor built and then replaced) do not matter.
``copy_`` into any part of a tensor counts as writing it: loaders write whole tensors.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

#: The in-place ops that draw random numbers: skipped while a model is built.
RANDOM_INPLACE = frozenset("normal_ uniform_ bernoulli_ exponential_ random_ cauchy_ log_normal_ geometric_".split())


class Ledger:
    """Storages left unfilled while building (and those computed from them), and the
    storages written while loading."""

    def __init__(self) -> None:
        self.marked: dict[int, Any] = {}  # data_ptr -> storage (kept alive so no pointer is reused)
        self.written: set[int] = set()

    def unwritten(self, model: Any) -> list[str]:
        """Names of the tensors ``model`` holds whose values came from the skipped fills
        and that the load did not overwrite."""
        out = []
        for name, t in _held(model):
            st = _storage(t)
            if st is not None and st.data_ptr() in self.marked and st.data_ptr() not in self.written:
                out.append(name)
        return out

    def complete(self, model: Any) -> bool:
        return not self.unwritten(model)


def _held(model: Any):
    """Every tensor a module tree holds: parameters, buffers (persistent or not) and
    plain tensor attributes."""
    import torch

    for mod_name, mod in model.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        for key, value in list(mod._parameters.items()) + list(mod._buffers.items()):
            if value is not None:
                yield prefix + key, value
        for key, value in vars(mod).items():
            if isinstance(value, torch.Tensor):
                yield prefix + key, value


def _storage(t: Any):
    import torch

    if not isinstance(t, torch.Tensor) or t.device.type == "meta" or t.numel() == 0:
        return None
    return t.untyped_storage()


@contextlib.contextmanager
def skipping_init(ledger: Ledger) -> Iterator[Ledger]:
    """While inside: :data:`RANDOM_INPLACE` ops return their tensor unfilled, marked in
    ``ledger``; in-place ops on a marked tensor are not run either (it stays marked); and
    every tensor an op computes from a marked one is marked."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from torch.utils._pytree import tree_leaves

    class SkipRandom(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = func.overloadpacket.__name__
            if name.endswith("_") and args:
                st = _storage(args[0])
                if st is not None and (name in RANDOM_INPLACE or st.data_ptr() in ledger.marked):
                    # a random fill, or any in-place op on an unfilled tensor (the rest of
                    # trunc_normal_: erfinv_, mul_, add_, clamp_): not run, its memory untouched
                    ledger.marked[st.data_ptr()] = st
                    return args[0]
            out = func(*args, **kwargs)
            if ledger.marked and any((st := _storage(a)) is not None and st.data_ptr() in ledger.marked
                                     for a in tree_leaves((args, kwargs))):
                for o in tree_leaves(out):  # computed from an unfilled tensor: marked too
                    st = _storage(o)
                    if st is not None:
                        ledger.marked[st.data_ptr()] = st
            return out

    with SkipRandom():
        yield ledger


@contextlib.contextmanager
def recording_writes(ledger: Ledger) -> Iterator[Ledger]:
    """While inside: the storage of every tensor ``copy_`` writes is recorded in ``ledger``."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class RecordCopies(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ == "copy_" and args:
                st = _storage(args[0])
                if st is not None:
                    ledger.written.add(st.data_ptr())
            return func(*args, **(kwargs or {}))

    with RecordCopies():
        yield ledger
