"""Fine-tune one task: the recipe is identical for every initialisation.

Reads the processed cohort through the data package's ``TaskDataModule``, builds the backbone
named in ``settings.model`` with the ``pretrain`` stage's weights (``models/pretrained/``, for
every source, ``scratch`` included), trains a TaskModule and saves it as safetensors.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch

from neurotransfer.config import FinetuneSettings, Settings, SettingsError, TaskSettings
from neurotransfer.train.checkpoint import member_file, save_task_model
from neurotransfer.train.fit import FitResult, fit_task_model
from neurotransfer.train.module import OptimConfig, TaskModule

if TYPE_CHECKING:
    import pandas as pd

    from neurotransfer.data import TaskDataModule

log = logging.getLogger(__name__)

FINETUNED_DIR = Path("models/finetuned")


def manifest_path(settings: Settings, root: Path) -> Path:
    path = root / settings.data.processed_dir / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found (run the preprocess stage first)")
    return path


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
    from neurotransfer.models import build_backbone, load_backbone_weights

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
    problems = [
        f"{key}: saved {meta.get(key)!r}, params {value!r}"
        for key, value in expected.items()
        if meta.get(key) != value
    ]
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
    settings: Settings, task_name: str, root: Path, finetune: FinetuneSettings | None = None
) -> TaskDataModule:
    from neurotransfer.data import TaskDataModule

    ft = finetune or settings.finetune
    return TaskDataModule(
        manifest_path=manifest_path(settings, root),
        task_name=task_name,
        task=task_settings(settings, task_name),
        batch_size=ft.batch_size,
        num_workers=ft.num_workers,
        augment=settings.data.augment,
        seed=ft.seed,
        root=root,
    )


def train_task(
    settings: Settings,
    task_name: str,
    root: Path,
    finetune: FinetuneSettings | None = None,
    datamodule: TaskDataModule | None = None,
    log_dir: Path | None = None,
    **trainer_overrides: Any,
) -> TrainedTask:
    """The fine-tuning recipe: the initial backbone, a task head, `fit_task_model`.

    `finetune` replaces ``settings.finetune`` (another seed or schedule) and `datamodule` the
    task's full data (a subset of its training subjects): the ``scaling`` stage's two knobs.
    """
    from neurotransfer.models import TaskHead, backbone_layer_groups

    task = task_settings(settings, task_name)
    ft = finetune or settings.finetune
    L.seed_everything(ft.seed, workers=True)
    if datamodule is None:
        datamodule = task_datamodule(settings, task_name, root, ft)
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


# Ensemble members k > 0 log in <task's dvclive folder>/members/<k>/.
MEMBER_LOGS = "members"


def member_log_dir(root: Path, task_name: str, index: int) -> Path:
    """dvclive folder of ensemble member `index`: member 0 logs where a single model does (the
    folder ``dvc.yaml`` declares), members k > 0 in ``members/<k>/`` beneath it."""
    folder = root / "dvclive" / "finetune" / task_name
    return folder if index == 0 else folder / MEMBER_LOGS / str(index)


def run_finetune(
    settings: Settings, task_name: str, root: Path = Path(".")
) -> dict[str, Any] | None:
    """Fine-tune `task_name`; write the model and return the metrics to record.

    With ``finetune.ensemble_size`` > 1 the recipe runs once per member seed
    (`FinetuneSettings.member_seeds`) and the members are saved together, once all have
    trained: a run killed part-way leaves the previous model in place and restarts from the
    first member.

    Under DDP every process trains, but only the global-zero process writes the model and gets
    the metrics back (the others return None), so no two processes write the same file.
    """
    task = task_settings(settings, task_name)
    ft = settings.finetune
    seeds = ft.member_seeds()
    # Logs of an earlier, larger ensemble. ignore_errors: under DDP every process gets here.
    shutil.rmtree(member_log_dir(root, task_name, 0) / MEMBER_LOGS, ignore_errors=True)
    members: list[TrainedTask] = []
    for index, seed in enumerate(seeds):
        if len(seeds) > 1:
            log.info("ensemble member %d of %d (seed %d)", index + 1, len(seeds), seed)
        members.append(
            train_task(
                settings,
                task_name,
                root,
                finetune=ft.model_copy(update={"seed": seed}),
                log_dir=member_log_dir(root, task_name, index),
            )
        )
    first = members[0]
    result, init_record = first.result, first.init_record
    train_frame, val_frame = first.train_frame, first.val_frame

    if not result.is_global_zero:
        return None
    member_records = [
        {
            "seed": seed,
            "file": member_file(index),
            "best_epoch": trained.result.best_epoch,
            "best_score": trained.result.best_score,
            "epochs_run": trained.result.epochs_run,
            "train_seconds": round(trained.result.seconds, 2),
        }
        for index, (seed, trained) in enumerate(zip(seeds, members, strict=True))
    ]
    meta = {
        "task": task_name,
        "kind": task.kind,
        "model": settings.model.name,
        "model_options": settings.model.options,
        "input_shape": list(settings.data.preprocess.shape),
        "init": init_record,
        "mode": ft.mode,
        "seed": ft.seed,
        "select_epoch": ft.select_epoch,
        "best_epoch": result.best_epoch,
        "monitor": result.monitor,
        "best_score": result.best_score,
        "target_mean": first.target_mean,
        "target_std": first.target_std,
        "ensemble_size": len(members),
        "members": member_records,
    }
    save_task_model([trained.module for trained in members], root / FINETUNED_DIR / task_name, meta)
    seconds = sum(trained.result.seconds for trained in members)
    epochs = sum(trained.result.epochs_run for trained in members)
    metrics: dict[str, Any] = {
        "task": task_name,
        "kind": task.kind,
        "model": settings.model.name,
        "init": init_record["source"],
        "n_train": len(train_frame),
        "n_val": len(val_frame),
        # With select_epoch "last" the "best" entries describe the last epoch, the one kept.
        # For an ensemble: the score is the members' mean, the epochs are member 0's, and
        # `members` has each member's.
        "select_epoch": ft.select_epoch,
        f"best_{result.monitor}": float(np.mean([m.result.best_score for m in members])),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": round(seconds, 2),
        "seconds_per_epoch": round(seconds / max(1, epochs), 3),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "host": platform.node() or "unknown",
        "trainable_parameters": int(
            np.sum([p.numel() for p in first.module.parameters() if p.requires_grad])
        ),
    }
    if len(members) > 1:
        metrics["ensemble_size"] = len(members)
        # Keyed, not a list: `dvc metrics show/diff` flatten dicts into one column per value.
        metrics["members"] = {
            f"member{index}": {k: v for k, v in record.items() if k != "file"}
            for index, record in enumerate(member_records)
        }
    return metrics
