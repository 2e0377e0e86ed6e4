"""Pre-training a backbone in Lightning on the synthetic volumes or the real pool.

:func:`train_backbone` wraps the backbone in the objectives' :class:`~.module.PretrainModule`
(covariate regression, SimCLR, masked reconstruction: :mod:`.objectives`), fits it with one
seeded shuffled loader and logs the curves with dvclive under ``pretrain.log_dir``. It returns
the training record that ``meta.json`` and ``metrics/pretrain.json`` keep; the
``pretrain`` stage (:mod:`neurotransfer.stages.pretrain`) decides when it runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from neurotransfer.config import Settings
from neurotransfer.live_logger import dvclive_logger
from neurotransfer.models import backbone_options
from neurotransfer.pretrain.data import VolumeDataset
from neurotransfer.pretrain.module import ObjectiveConfig, PretrainModule, PretrainOptim
from neurotransfer.runtime import resolve_device, resolve_precision


def mask_patch(settings: Settings) -> int | tuple[int, int, int]:
    """Masked cubes: the model's own patches for vit3d, ``pretrain.masked.patch_size`` else."""
    if settings.model.name == "vit3d":
        patch = settings.model.options.get("patch_size", backbone_options("vit3d")["patch_size"])
        return patch if isinstance(patch, int) else tuple(int(p) for p in patch)
    return settings.pretrain.masked.patch_size


def pretrain_module(settings: Settings, backbone: torch.nn.Module) -> PretrainModule:
    """``backbone`` with the heads and optimiser of the ``pretrain.objectives``."""
    cfg = settings.pretrain
    shape = tuple(settings.data.preprocess.shape)
    return PretrainModule(
        backbone,
        cfg.objectives,
        ObjectiveConfig(
            input_shape=shape,
            n_covariates=len(cfg.covariates) if "covariates" in cfg.objectives else 0,
            temperature=cfg.simclr.temperature,
            projection_dim=cfg.simclr.projection_dim,
            hidden_dim=cfg.simclr.hidden_dim,
            crop_scale=tuple(cfg.simclr.crop_scale),
            noise_std=cfg.simclr.noise_std,
            mask_ratio=cfg.masked.mask_ratio,
            mask_patch=mask_patch(settings),
        ),
        PretrainOptim(
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup_epochs=cfg.warmup_epochs,
            epochs=cfg.epochs,
        ),
    )


def train_backbone(
    settings: Settings,
    backbone: torch.nn.Module,
    dataset: VolumeDataset,
    log_dir: Path,
) -> dict[str, Any]:
    """Pre-train ``backbone`` in place on ``dataset``; return the training record."""
    cfg = settings.pretrain
    module = pretrain_module(settings, backbone)
    if len(dataset) < 2:
        raise ValueError(f"pre-training needs at least 2 volumes, got {len(dataset)}")
    batch_size = min(cfg.batch_size, len(dataset))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        # Whole batches only: NT-Xent needs negatives, BatchNorm more than one sample.
        drop_last=len(dataset) % batch_size == 1 or "simclr" in cfg.objectives,
        generator=torch.Generator().manual_seed(cfg.seed),
        num_workers=0,
    )
    on_gpu = resolve_device(cfg.accelerator, "pretrain.accelerator").type == "cuda"
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator="gpu" if on_gpu else "cpu",
        devices=1,
        precision=resolve_precision(cfg.precision),
        # CUDA has no deterministic backward for some 3D pooling layers.
        deterministic=not on_gpu,
        logger=dvclive_logger(log_dir),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    seconds = time.perf_counter() - start
    final = {
        key.removeprefix("train/"): float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith("train/")
    }
    backbone.cpu()
    return {
        "objectives": list(cfg.objectives),
        "epochs": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        "batch_size": batch_size,
        "train_seconds": round(seconds, 2),
        "final_losses": final,
        "device": "cuda" if on_gpu else "cpu",
        "precision": str(trainer.precision),
    }
