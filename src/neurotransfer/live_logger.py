"""The DVCLive logger every Lightning run (finetune, pretrain, synthesize) writes its curves with.

``dvclive.lightning.DVCLiveLogger`` decides whether to sync (write ``metrics.json`` and the
curve files) by calling ``inspect.stack()``, which reads the source lines of every frame on the
stack: about 11 ms per call at a Lightning-like depth of 60 frames on the 2-core CPU machine,
where walking the frames' code names takes 0.01 ms. :class:`DVCLiveLogger` does the walk; what
is logged and when it is synced are unchanged. The three stages build it through
:func:`dvclive_logger`, with the one set of options they share.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from dvclive.lightning import DVCLiveLogger as _DVCLiveLogger
from lightning.pytorch.utilities import rank_zero_only

#: The Lightning functions from which dvclive syncs (``dvclive.lightning._should_sync``).
SYNC_CALLERS = frozenset(
    {"update_train_step_metrics", "update_train_epoch_metrics", "log_eval_end_metrics"}
)


def called_from_sync_point(frame: FrameType | None = None) -> bool:
    """True when one of :data:`SYNC_CALLERS` is on the call stack (above ``frame``, default:
    the caller's frame)."""
    current = frame if frame is not None else sys._getframe(1)
    while current is not None:
        if current.f_code.co_name in SYNC_CALLERS:
            return True
        current = current.f_back
    return False


class DVCLiveLogger(_DVCLiveLogger):
    """``dvclive.lightning.DVCLiveLogger`` with a frame walk instead of ``inspect.stack()``."""

    @rank_zero_only
    def log_metrics(
        self,
        metrics: Mapping[str, int | float | str],
        step: int | None = None,
        sync: bool | None = False,
    ) -> None:
        if not sync and called_from_sync_point(sys._getframe(1)):
            sync = True
        # skip dvclive's Lightning override (its inspect.stack() check), keep the rest
        super(_DVCLiveLogger, self).log_metrics(metrics, step, sync)


def dvclive_logger(log_dir: Path) -> DVCLiveLogger:
    """A logger writing under ``log_dir``. ``dvcyaml=None``: dvc.yaml declares these metrics and
    plots itself, and dvclive must not rewrite the pipeline file while a stage runs."""
    return DVCLiveLogger(dir=str(log_dir), dvcyaml=None, save_dvc_exp=False, report=None)
