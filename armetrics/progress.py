"""The data pass's progress bars on stderr: one overall bar (images streamed) and one
bar per data probe with its own ETA, stacked (tqdm ``position``)::

    analyze:  25%|██▌       | 256/1000 [00:10<00:30, 25.6img/s]
    accuracy           256/1000 samples  ETA 00:30
    smoothness          37/256 samples  ETA 04:10

A probe's bar counts the samples it processes (:meth:`armetrics.probe.Probe.samples_in_batch`),
moves when the probe reports progress from inside ``update`` (:meth:`armetrics.probe.Batch.advance`)
and, when ``update`` returns, by the rest of that probe's samples of the batch. Its ETA
is tqdm's: the samples it has left at its average rate since the pass began, i.e. the
wall time until that probe is done if the mix of work stays as it was.

Nothing is drawn (and no tqdm object made) when the bars are off: stderr not a terminal,
``--quiet`` or ``analyze(progress=False)``.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

#: one probe bar: name padded, count, unit, ETA (tqdm's ``remaining``)
PROBE_FORMAT = "{desc:<16} {n_fmt:>6}/{total_fmt} {unit}  ETA {remaining}"


def make_bar(**kwargs: Any):
    """A tqdm bar on stderr (a module attribute, so tests can record what the bars get)."""
    from tqdm.auto import tqdm

    return tqdm(file=sys.stderr, leave=False, dynamic_ncols=True, **kwargs)


class Bars:
    """The overall bar and one bar per probe (``names``, ``totals``: the samples each will
    process); every method is a no-op when ``enabled`` is False."""

    def __init__(self, names: Sequence[str], totals: Sequence[int], images: int, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: list[Any] = []
        self.overall = None
        if not enabled:
            return
        self.overall = make_bar(total=images, unit="img", desc="analyze", position=0)
        self.bars = [make_bar(total=total, unit="samples", desc=name, position=i + 1, smoothing=0,
                              bar_format=PROBE_FORMAT)
                     for i, (name, total) in enumerate(zip(names, totals))]

    def tracker(self, i: int, count: int) -> "Tracker":
        """What probe ``i``'s ``batch.advance`` reports to while it updates a batch in
        which it processes ``count`` samples."""
        return Tracker(self.bars[i] if self.enabled else None, count)

    def images(self, k: int) -> None:
        """``k`` more images streamed (the overall bar)."""
        if self.overall is not None:
            self.overall.update(k)

    def close(self) -> None:
        for bar in self.bars + ([self.overall] if self.overall is not None else []):
            bar.close()


class Tracker:
    """Probe progress within one batch: advances its bar by what the probe reports, never
    past the ``count`` samples it processes in the batch; :meth:`finish` credits the rest."""

    def __init__(self, bar: Any, count: int) -> None:
        self.bar, self.count, self.done = bar, count, 0

    def __call__(self, k: int) -> None:
        k = max(0, min(k, self.count - self.done))
        self.done += k
        if k and self.bar is not None:
            self.bar.update(k)

    def finish(self) -> None:
        self(self.count - self.done)

