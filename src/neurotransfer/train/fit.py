"""Fit a TaskModule with Lightning: early stopping, best-epoch weights, dvclive logging."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping

from neurotransfer.config import FinetuneSettings
from neurotransfer.train.module import TaskModule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitResult:
    best_score: float
    best_epoch: int
    epochs_run: int
    seconds: float
    monitor: str


class BestWeights(Callback):
    """Keep the best validation epoch's weights in memory (no pickled checkpoint files).

    The fine-tuned model is saved once, as safetensors, after training; nothing on disk is
    written mid-run, so a run killed at any point leaves no partial model behind.
    """

    def __init__(self, monitor: str, mode: str) -> None:
        self.monitor, self.mode = monitor, mode
        self.best_score = -math.inf if mode == "max" else math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        score = float(value)
        better = score > self.best_score if self.mode == "max" else score < self.best_score
        if better or self.best_state is None:
            self.best_score, self.best_epoch = score, trainer.current_epoch
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()
            }


def resolve_precision(setting: str) -> str:
    """'auto' means bf16 mixed precision on a GPU that supports it, else full fp32."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def make_trainer(
    settings: FinetuneSettings, callbacks: list[Callback], log_dir: Path | None, **overrides: Any
) -> L.Trainer:
    logger: Any = False
    if log_dir is not None:
        from dvclive.lightning import DVCLiveLogger

        # dvcyaml=None: dvc.yaml declares these metrics and plots itself; dvclive must not
        # rewrite the pipeline file while a stage runs.
        logger = DVCLiveLogger(dir=str(log_dir), dvcyaml=None, save_dvc_exp=False, report=None)
    kwargs: dict[str, Any] = {
        "max_epochs": settings.max_epochs,
        "accelerator": settings.accelerator,
        "devices": settings.devices,
        "precision": resolve_precision(settings.precision),
        "deterministic": settings.deterministic,
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
    **trainer_overrides: Any,
) -> FitResult:
    """Train with early stopping on the validation metric; leave the best epoch's weights loaded."""
    monitor, mode = module.monitor
    best = BestWeights(monitor, mode)
    callbacks: list[Callback] = [best]
    if settings.early_stopping_patience > 0:
        callbacks.append(
            EarlyStopping(monitor=monitor, mode=mode, patience=settings.early_stopping_patience)
        )
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
    )
