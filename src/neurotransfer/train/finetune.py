"""Fine-tune one network on one task: the recipe is identical for every initialisation.

Reads the processed cohort through the data package's ``TaskDataModule`` (`task_datamodule`),
builds the backbone named in ``settings.model`` with the ``pretrain`` stage's weights
(``models/pretrained/``, for every source, ``scratch`` included: `initial_backbone`), adds a
task head and trains the TaskModule (`train_task`). The ``finetune@<task>`` stage
(``neurotransfer.stages.finetune``) runs this once per fine-tuning seed, ensemble member and
cross-validation fold and saves the models; the ``scaling`` stage runs it on subsets of the
training subjects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch

from neurotransfer.config import FinetuneSettings, Settings, SettingsError, TaskSettings
from neurotransfer.data.datamodule import TaskDataModule
from neurotransfer.data.manifest import manifest_path, require_manifest
from neurotransfer.models import (
    TaskHead,
    backbone_layer_groups,
    build_backbone,
    load_backbone_weights,
)
from neurotransfer.train.checkpoint import meta_mismatches
from neurotransfer.train.fit import FitResult, fit_task_model
from neurotransfer.train.module import OptimConfig, TaskModule


def task_settings(settings: Settings, task_name: str) -> TaskSettings:
    if task_name not in settings.tasks:
        raise SettingsError(
            f"unknown task {task_name!r}; tasks in params.yaml: {sorted(settings.tasks)}"
        )
    return settings.tasks[task_name]


def initial_backbone(settings: Settings, root: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The backbone fine-tuning starts from, and a record of where it came from.

    Always the ``pretrain`` stage's output (``pretrain.out_dir``), whatever the source, scratch
    included, so every variant runs the same DAG. Its ``meta.json`` must agree with the params
    on the architecture, its options, the input shape and the source; otherwise the stage stops
    and says to re-run ``dvc repro pretrain``.
    """
    shape = tuple(settings.data.preprocess.shape)
    backbone = build_backbone(settings.model.name, shape, **settings.model.options)
    source = settings.pretrain.source
    folder = root / settings.pretrain.out_dir
    weights = folder / "backbone.safetensors"
    meta_path = folder / "meta.json"
    if not weights.is_file() or not meta_path.is_file():
        raise FileNotFoundError(
            f"{weights}: no pre-trained backbone (pretrain.source is {source!r}); fine-tuning "
            "always starts from the pretrain stage's output: run `dvc repro pretrain` first"
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    spec = backbone.spec
    expected = {
        "architecture": settings.model.name,
        "options": spec.options if spec is not None else None,
        "input_shape": list(shape),
        "source": source,
    }
    problems = meta_mismatches(meta, expected)
    if problems:
        raise SettingsError(
            f"{meta_path}: the pre-trained backbone does not match params.yaml ("
            + "; ".join(problems)
            + "); re-run the pretrain stage for these params: `dvc repro pretrain`"
        )
    load_backbone_weights(backbone, weights)
    return backbone, {"source": source, "pretrained_meta": meta}


@dataclass
class TrainedTask:
    """A task model after training (best epoch's weights loaded) and what it was trained on."""

    module: TaskModule
    result: FitResult
    init_record: dict[str, Any]
    train_frame: pd.DataFrame
    val_frame: pd.DataFrame
    target_mean: float
    target_std: float


def task_datamodule(
    settings: Settings,
    task_name: str,
    root: Path,
    finetune: FinetuneSettings | None = None,
    fold: int | None = None,
) -> TaskDataModule:
    """The task's data; with cross-validation, fold `fold`'s splits (one of
    ``data.splits.folds()``)."""
    ft = finetune or settings.finetune
    splits = settings.data.splits
    if (fold is None) != (splits.mode != "kfold"):
        raise ValueError(
            f"data.splits.mode is {splits.mode!r}: "
            + ("a fold must be chosen" if fold is None else f"there is no fold {fold}")
        )
    return TaskDataModule(
        manifest_path=require_manifest(manifest_path(settings.data.processed_dir, root)),
        task_name=task_name,
        task=task_settings(settings, task_name),
        batch_size=ft.batch_size,
        num_workers=ft.num_workers,
        augment=settings.data.augment,
        seed=ft.seed,
        root=root,
        fold=fold,
        n_folds=splits.k if fold is not None else None,
    )


def train_task(
    settings: Settings,
    task_name: str,
    root: Path,
    finetune: FinetuneSettings | None = None,
    datamodule: TaskDataModule | None = None,
    log_dir: Path | None = None,
    fold: int | None = None,
    **trainer_overrides: Any,
) -> TrainedTask:
    """The fine-tuning recipe: the initial backbone, a task head, `fit_task_model`.

    `finetune` replaces ``settings.finetune`` (another seed or schedule) and `datamodule` the
    task's full data (a subset of its training subjects): the ``scaling`` stage's two knobs.
    Without `datamodule`, the data are the task's (cross-validation fold `fold`'s).
    """
    task = task_settings(settings, task_name)
    ft = finetune or settings.finetune
    L.seed_everything(ft.seed, workers=True)
    if datamodule is None:
        datamodule = task_datamodule(settings, task_name, root, ft, fold)
    datamodule.setup("fit")
    train_frame = datamodule.frame("train")
    val_frame = datamodule.frame("val")

    backbone, init_record = initial_backbone(settings, root)
    head = TaskHead(backbone.out_features)
    target_mean, target_std = 0.0, 1.0
    if task.kind == "regression":
        target_mean = float(train_frame["target"].mean())
        target_std = float(train_frame["target"].std(ddof=0)) or 1.0
    module = TaskModule(
        backbone,
        head,
        task.kind,
        OptimConfig(
            lr=ft.lr,
            head_lr=ft.head_lr,
            weight_decay=ft.weight_decay,
            warmup_epochs=ft.warmup_epochs,
            max_epochs=ft.max_epochs,
            layer_decay=ft.layer_decay,
            linear_probe=ft.mode == "linear_probe",
        ),
        layer_groups=backbone_layer_groups(backbone) if ft.layer_decay < 1.0 else None,
        target_mean=target_mean,
        target_std=target_std,
    )
    result = fit_task_model(module, datamodule, ft, log_dir=log_dir, **trainer_overrides)
    return TrainedTask(module, result, init_record, train_frame, val_frame, target_mean, target_std)
