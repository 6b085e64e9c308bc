"""Interruption (Ctrl-C, SIGTERM) that cannot be lost.

Python turns SIGINT into a ``KeyboardInterrupt`` raised wherever the main thread happens
to be; if that is inside a ``__del__`` method, a weakref or GC callback, the exception is
printed as "Exception ignored" and the run simply goes on (and would later write its
report). The command line therefore installs :func:`request` for SIGINT and SIGTERM: it
records the request *and* raises. The engine calls :func:`check` at every batch and
before anything is written, so a swallowed interruption still stops the run there.
Library users keep Python's default handlers (nothing is installed on import).
"""

from __future__ import annotations

import signal

_requested = False
_written: list[str] = []


def request(signum=None, frame=None) -> None:
    """Signal handler: remember that an interruption was requested, then raise it."""
    global _requested
    _requested = True
    raise KeyboardInterrupt


def check() -> None:
    """Raise ``KeyboardInterrupt`` if an interruption was requested (even one already swallowed)."""
    if _requested:
        raise KeyboardInterrupt


def install() -> None:
    """Route SIGINT and SIGTERM to :func:`request` (main thread only, as ``signal``
    requires). A signal the process was started with ignored (``nohup``, a background
    job of a non-interactive shell ignores SIGINT) stays ignored, as Python itself does."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, request)


def reset() -> None:
    """Forget the files recorded by :func:`wrote` (a new command starts). A pending
    request is kept: an interruption swallowed before the command still stops it."""
    _written.clear()


def wrote(path) -> None:
    """Record that a report was completely written (for the interruption message)."""
    _written.append(str(path))


def written_text() -> str:
    """What an interrupted command leaves behind, for its one-line message."""
    if not _written:
        return "no report was written or changed"
    if len(_written) == 1:
        return f"{_written[0]} was written before the interruption and is complete; nothing else was written or changed"
    return (f"{len(_written)} reports written before the interruption are complete (the last: {_written[-1]}); "
            f"the one in progress was not written")
