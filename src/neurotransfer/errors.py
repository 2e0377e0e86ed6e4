"""The error every layer raises for parameters that cannot work.

It lives in a module of its own, importing nothing, so that ``neurotransfer.models`` (below the
settings) can raise it when external weights do not fit the configured model, without importing
:mod:`neurotransfer.config`. :mod:`neurotransfer.config` re-exports it, and the CLI exits with
status 2 for it.
"""

from __future__ import annotations


class SettingsError(ValueError):
    """A parameter file that cannot be turned into valid settings, or settings that the
    stage's inputs (e.g. the external weights for the model) cannot satisfy."""
