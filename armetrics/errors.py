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
