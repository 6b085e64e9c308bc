"""Typed errors. The library raises these; the CLI prints them as one line.

Every message names the problem *and* the fix, e.g.
``"model.pt is an HTML page, not a checkpoint (a failed download?): download it again"``.
"""

from __future__ import annotations


class ArmetricsError(Exception):
    """Base class of every error armetrics raises on purpose (exit code 1 in the CLI)."""


class LoadError(ArmetricsError):
    """A checkpoint or architecture could not be loaded safely."""


class UnsafePickleError(LoadError):
    """The file holds pickled Python objects and ``trust_pickle`` was not given."""


class DataError(ArmetricsError):
    """A data source is missing, empty, corrupt or inconsistent with the model."""


class ConfigError(ArmetricsError):
    """An unknown probe, an unknown option or a malformed option value."""


class ReportError(ArmetricsError):
    """A report file is not an armetrics report or comes from a newer schema."""


class ProbeError(ArmetricsError):
    """A probe could not run on this model or data."""


class InputError(ArmetricsError):
    """An input path is not a readable regular file (missing, a FIFO, a device, unreadable)."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name if it has none), cut to ``limit``."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def one_line(text: str) -> str:
    """``text`` with control characters (newlines in a file name, escape codes) written as
    escapes, so that an error message stays one line on the terminal."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class UnsafeCodeError(LoadError):
    """The file carries code (a TorchScript archive, or a torch.export program calling
    operators outside the pure-tensor allow-list) and ``trust_code`` was not given."""


def shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis (values echoed in messages)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SamplesError(ReportError):
    """A report's per-sample side file (``<report>.samples.npz``) is missing, belongs to
    another report, or is malformed."""


class PairingError(ArmetricsError):
    """Two reports cannot be compared sample by sample: they were measured on different
    images, with different seeds, or on different samples."""
