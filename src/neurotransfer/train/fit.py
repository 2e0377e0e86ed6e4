"""Fit a TaskModule with Lightning: early stopping, best-epoch weights, dvclive logging."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping

from neurotransfer.config import FinetuneSettings
from neurotransfer.live_logger import dvclive_logger
from neurotransfer.runtime import resolve_precision
from neurotransfer.train.module import TaskModule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitResult:
    # The monitored quantity (`monitor`, e.g. "val_loss") at the kept epoch.
    best_score: float
    best_epoch: int
    epochs_run: int
    seconds: float
    monitor: str
    # False on every DDP process but rank 0: callers write models and metrics only where True.
    is_global_zero: bool = True
    # Every validation value logged at the kept epoch (val_loss and val_auc / val_mae), so the
    # task metric of the kept weights is known whichever quantity was monitored.
    kept_epoch_metrics: dict[str, float] = field(default_factory=dict)


# Monitored values this close count as equal, and ties go to the later epoch: a saturated
# metric (AUC 1.0 on a small validation set) then keeps the weights trained longest, not the
# first epoch that happened to reach it. Relative to the value, with an absolute floor for 0.
TIE_REL_TOL = 1e-6
TIE_ABS_TOL = 1e-9


def at_least_as_good(score: float, best: float, mode: str) -> bool:
    """Whether `score` beats `best` or ties it (within the tolerance above) in direction `mode`."""
    if math.isnan(best):
        return not math.isnan(score)  # anything finite beats a NaN kept so far
    if math.isclose(score, best, rel_tol=TIE_REL_TOL, abs_tol=TIE_ABS_TOL):
        return True
    return score > best if mode == "max" else score < best


class BestWeights(Callback):
    """Keep the best validation epoch's weights in memory (no pickled checkpoint files).

    "Best" is the best monitored value; of equal values (within ``TIE_REL_TOL``) the later
    epoch wins. With ``keep_last`` it keeps the last validated epoch's weights instead (and
    that epoch's score): the full schedule's end point, for validation sets too small to pick
    an epoch from. The fine-tuned model is saved once, as safetensors, after training; nothing
    on disk is written mid-run, so a run killed at any point leaves no partial model behind.
    """

    def __init__(self, monitor: str, mode: str, keep_last: bool = False) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.mode, self.keep_last = monitor, mode, keep_last
        self.best_score = -math.inf if mode == "max" else math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_metrics: dict[str, float] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        score = float(value)
        # A NaN loss never counts as better (every comparison with NaN is False).
        keep = self.keep_last or self.best_state is None
        if keep or at_least_as_good(score, self.best_score, self.mode):
            self.best_score, self.best_epoch = score, trainer.current_epoch
            self.best_metrics = {
                key: float(v)
                for key, v in trainer.callback_metrics.items()
                if key.startswith("val_") and v.numel() == 1
            }
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()
            }

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1 and self.best_state is not None:
            # Under DDP the parameters agree across ranks, but BatchNorm running statistics
            # do not (each rank updates its own after DDP's start-of-forward broadcast). The
            # monitored value is synced, so every rank picked the same epoch; rank 0's copy
            # is made everyone's, so all ranks hold, and may save, identical weights.
            state = (self.best_score, self.best_epoch, self.best_state, self.best_metrics)
            self.best_score, self.best_epoch, self.best_state, self.best_metrics = (
                trainer.strategy.broadcast(state, src=0)
            )


def apply_speedups(module: TaskModule, settings: FinetuneSettings) -> None:
    """Channels-last weights and in-place torch.compile of the backbone, when enabled.

    Both leave the state_dict's keys and values as they are, so best-epoch copies and the saved
    safetensors are unchanged. The CPU profile enables channels-last (its one-thread seed
    processes train about a quarter faster with it), the GPU profile both.
    """
    if settings.channels_last:
        # cuDNN (GPU) and oneDNN (CPU) then pick NDHWC kernels (input with one channel is
        # already in that layout); only 5-D tensors (conv weights) change layout.
        module.backbone.to(memory_format=torch.channels_last_3d)
    if settings.compile:
        module.backbone.compile()


def make_trainer(
    settings: FinetuneSettings, callbacks: list[Callback], log_dir: Path | None, **overrides: Any
) -> L.Trainer:
    logger: Any = False
    if log_dir is not None:
        logger = dvclive_logger(log_dir)
    kwargs: dict[str, Any] = {
        "max_epochs": settings.max_epochs,
        "accelerator": settings.accelerator,
        "devices": settings.devices,
        "num_nodes": settings.num_nodes,
        "strategy": settings.strategy,
        "sync_batchnorm": settings.sync_batchnorm,
        "precision": resolve_precision(settings.precision),
        "deterministic": settings.deterministic,
        "benchmark": settings.cudnn_benchmark,
        "callbacks": callbacks,
        "logger": logger,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 0,
    }
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def fit_task_model(
    module: TaskModule,
    datamodule: L.LightningDataModule,
    settings: FinetuneSettings,
    log_dir: Path | None = None,
    extra_callbacks: list[Callback] | None = None,
    **trainer_overrides: Any,
) -> FitResult:
    """Train with early stopping on the monitored validation value (``settings.monitor``: the
    loss or the task metric); leave the best epoch's weights loaded (ties: the later epoch), or,
    with ``settings.select_epoch == "last"``, the last epoch's."""
    monitor, mode = module.monitor_for(settings.monitor)
    best = BestWeights(monitor, mode, keep_last=settings.select_epoch == "last")
    callbacks: list[Callback] = [best, *(extra_callbacks or [])]
    if settings.early_stopping_patience > 0:
        callbacks.append(
            EarlyStopping(monitor=monitor, mode=mode, patience=settings.early_stopping_patience)
        )
    apply_speedups(module, settings)
    trainer = make_trainer(settings, callbacks, log_dir, **trainer_overrides)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - start
    if best.best_state is None:
        raise RuntimeError(f"training produced no validation metric {monitor!r}")
    module.load_state_dict(best.best_state)
    log.info(
        "best %s=%.4f at epoch %d (%.1f s)", monitor, best.best_score, best.best_epoch, seconds
    )
    return FitResult(
        best_score=best.best_score,
        best_epoch=best.best_epoch,
        epochs_run=trainer.current_epoch,
        seconds=seconds,
        monitor=monitor,
        is_global_zero=trainer.is_global_zero,
        kept_epoch_metrics=best.best_metrics,
    )
