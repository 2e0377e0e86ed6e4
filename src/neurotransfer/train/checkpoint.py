"""Save and load fine-tuned task models (backbone + head) without pickle: one per fine-tuning
seed, each a single network or a deep ensemble.

Layout of ``models/finetuned/<task>/``::

    meta.json                  the run: task, architecture, options, input shape and the
                               seed values (``seeds``), in training order
    seed<k>/                   one per seed value k (``finetune.seed_values()``)
        model.safetensors      the whole TaskModule state (backbone, head, target scaling)
        model-<m>.safetensors  ensemble members m = 1, 2, ... (``finetune.ensemble_size`` > 1)
        meta.json              everything needed to rebuild this seed's module(s), with its
                               ``members`` (seed, epoch, validation score of each)

With cross-validation (``data.splits.mode: kfold``) the task folder holds one such set per
fold instead, ``fold<f>/meta.json`` and ``fold<f>/seed<k>/``, and its own ``meta.json`` adds
``folds`` (k).

Everything is written into one temporary directory and renamed into place, so a killed run, or
one in which a later seed fails to train, leaves the previous run's models whole (or none),
never some seeds of a new run beside old ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from neurotransfer.atomic import atomic_directory
from neurotransfer.models import TaskHead, build_backbone
from neurotransfer.train.module import OptimConfig, TaskModule

MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"


def member_file(index: int) -> str:
    """File of ensemble member `index`; member 0 is the single model's ``model.safetensors``."""
    return MODEL_FILE if index == 0 else f"model-{index}.safetensors"


def seed_dir(seed_value: int) -> str:
    """Folder (inside the task's model folder) of the model trained with seed value `seed_value`."""
    return f"seed{seed_value}"


def fold_dir(fold: int) -> str:
    """Folder (inside the task's model folder) of cross-validation fold `fold`'s models."""
    return f"fold{fold}"


@dataclass
class SeedModel:
    """The module(s) trained with one fine-tuning seed value: one network or an ensemble."""

    seed: int
    modules: list[TaskModule]
    meta: dict[str, Any]


def _members(modules: TaskModule | Sequence[TaskModule], directory: Path) -> list[TaskModule]:
    members = [modules] if isinstance(modules, TaskModule) else list(modules)
    if not members:
        raise ValueError(f"{directory}: no model to save")
    return members


def _check_member_records(members: list[TaskModule], directory: Path, meta: dict[str, Any]) -> None:
    listed = meta.get("members")
    if len(members) > 1 and (not isinstance(listed, list) or len(listed) != len(members)):
        raise ValueError(
            f"{directory}: {len(members)} ensemble members but meta['members'] lists "
            f"{len(listed) if isinstance(listed, list) else 'none'}"
        )


def _write_members(members: list[TaskModule], folder: Path, meta: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, module in enumerate(members):
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(folder / member_file(index)))
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def save_task_model(
    modules: TaskModule | Sequence[TaskModule], directory: str | Path, meta: dict[str, Any]
) -> Path:
    """Write one model or an ensemble atomically (temporary sibling folder, then rename).

    With more than one module, ``meta["members"]`` must list one record per module (the
    loader counts members from it). This is the layout of one seed's folder.
    """
    directory = Path(directory)
    members = _members(modules, directory)
    _check_member_records(members, directory, meta)
    with atomic_directory(directory) as tmp:
        _write_members(members, tmp, meta)
    return directory


def save_seed_models(
    seed_models: Sequence[SeedModel], directory: str | Path, run_meta: dict[str, Any]
) -> Path:
    """Write every seed's model(s) and the run's ``meta.json`` in one atomic replacement.

    `run_meta` is completed with ``seeds`` (the seed values, in training order); each seed's
    ``meta`` goes to ``seed<k>/meta.json``.
    """
    directory = Path(directory)
    checked, meta = _checked_seeds(seed_models, directory, run_meta)
    with atomic_directory(directory) as tmp:
        _write_seeds(checked, tmp, meta)
    return directory


def save_fold_models(
    fold_models: Sequence[Sequence[SeedModel]], directory: str | Path, run_meta: dict[str, Any]
) -> Path:
    """Write every cross-validation fold's seed models (``fold<f>/``, each laid out as
    `save_seed_models` lays out a task folder) and the run's ``meta.json`` (with ``folds`` and
    ``seeds``), in one atomic replacement. Every fold must have the same seed values."""
    directory = Path(directory)
    if not fold_models:
        raise ValueError(f"{directory}: no fold's models to save")
    folds = []
    for fold, seed_models in enumerate(fold_models):
        folds.append(_checked_seeds(seed_models, directory / fold_dir(fold), run_meta))
    seeds = [meta["seeds"] for _, meta in folds]
    if any(values != seeds[0] for values in seeds):
        raise ValueError(f"{directory}: the folds were trained with different seeds {seeds}")
    meta = {**run_meta, "seeds": seeds[0], "folds": len(folds)}
    with atomic_directory(directory) as tmp:
        for fold, (checked, fold_meta) in enumerate(folds):
            _write_seeds(checked, tmp / fold_dir(fold), {**fold_meta, "fold": fold})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def _checked_seeds(
    seed_models: Sequence[SeedModel], directory: Path, run_meta: dict[str, Any]
) -> tuple[list[tuple[int, list[TaskModule], dict[str, Any]]], dict[str, Any]]:
    if not seed_models:
        raise ValueError(f"{directory}: no seed's model to save")
    values = [model.seed for model in seed_models]
    if len(set(values)) != len(values):
        raise ValueError(f"{directory}: seed values {values} repeat; each needs its own folder")
    checked = []
    for model in seed_models:
        folder = directory / seed_dir(model.seed)
        members = _members(model.modules, folder)
        _check_member_records(members, folder, model.meta)
        checked.append((model.seed, members, model.meta))
    return checked, {**run_meta, "seeds": values}


def _write_seeds(
    checked: list[tuple[int, list[TaskModule], dict[str, Any]]], folder: Path, meta: dict[str, Any]
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed_value, members, seed_meta in checked:
        _write_members(members, folder / seed_dir(seed_value), seed_meta)
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_task_models(
    directory: str | Path, task: str | None = None
) -> tuple[list[TaskModule], dict[str, Any]]:
    """Rebuild the saved TaskModule(s) of one folder (one seed's) in eval mode, with the
    metadata: one module for a single model, one per member for an ensemble."""
    directory = Path(directory)
    # One seed's folder: models/finetuned/<task>/seed<k>/ (or .../fold<f>/seed<k>/)
    task = task or directory.parent.name
    meta = _read_meta(directory / META_FILE, task=task)
    listed = meta.get("members")
    n_members = len(listed) if isinstance(listed, list) and listed else 1
    modules = []
    for index in range(n_members):
        model_path = directory / member_file(index)
        if not model_path.is_file():
            raise FileNotFoundError(
                f"{model_path}: fine-tuned model file missing (member {index} of {n_members}): "
                f"re-run `dvc repro finetune@{task}`"
            )
        backbone = build_backbone(
            meta["model"], tuple(meta["input_shape"]), **meta["model_options"]
        )
        head = TaskHead(backbone.out_features, dropout=meta.get("head_dropout", 0.0))
        module = TaskModule(backbone, head, meta["kind"], OptimConfig())
        state = load_file(str(model_path))
        missing, unexpected = module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{model_path}: weights do not match model {meta['model']!r}: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        modules.append(module.eval())
    return modules, meta


def load_fold_models(directory: str | Path) -> tuple[list[list[SeedModel]], dict[str, Any]]:
    """Every fold's seed models of a task's model folder, and the run's meta. A folder written
    without cross-validation is one fold (``meta`` then has no ``folds``)."""
    directory = Path(directory)
    meta = _read_meta(directory / META_FILE, task=directory.name)
    if "folds" not in meta:
        seed_models, meta = load_seed_models(directory)
        return [seed_models], meta
    return [
        load_seed_models(directory / fold_dir(fold), task=directory.name)[0]
        for fold in range(int(meta["folds"]))
    ], meta


def load_seed_models(
    directory: str | Path, task: str | None = None
) -> tuple[list[SeedModel], dict[str, Any]]:
    """Every seed's module(s) of a task's model folder (or of one fold's folder, `task` then
    naming the task), in training order, and the folder's meta."""
    directory = Path(directory)
    task = task or directory.name
    meta_path = directory / META_FILE
    meta = _read_meta(meta_path, task=task)
    values = meta.get("seeds")
    if not isinstance(values, list) or not values:
        raise ValueError(
            f"{meta_path}: lists no fine-tuning seeds (`seeds`); the folder was written by an "
            "older version with one model and no seed folders: re-run the finetune stage "
            f"(`dvc repro finetune@{task}`)"
        )
    seed_models = []
    for value in values:
        modules, seed_meta = load_task_models(directory / seed_dir(int(value)), task=task)
        seed_models.append(SeedModel(int(value), modules, seed_meta))
    return seed_models, meta


def _read_meta(meta_path: Path, task: str) -> dict[str, Any]:
    """A model folder's ``meta.json``; missing or unreadable, an error saying which stage
    writes it (evaluate run before finetune, or a damaged folder)."""
    rerun = f"`dvc repro finetune@{task}`"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path}: fine-tuned model not found (run the finetune stage first: {rerun})"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_path}: not valid JSON ({err}); re-run {rerun}") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path}: expected a JSON object; re-run {rerun}")
    return meta


def meta_mismatches(meta: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """``key: saved …, params …`` for each ``expected`` value a saved ``meta.json`` differs in."""
    return [
        f"{key}: saved {meta.get(key)!r}, params {value!r}"
        for key, value in expected.items()
        if meta.get(key) != value
    ]
