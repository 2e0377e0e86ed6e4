"""Save and load a fine-tuned task model (backbone + head), or an ensemble of them, without pickle.

Layout of ``models/finetuned/<task>/``: ``model.safetensors`` (the whole TaskModule state:
backbone, head and the regression target scaling) and ``meta.json`` (everything needed to
rebuild the modules: architecture, options, input shape, task kind). An ensemble
(``finetune.ensemble_size`` > 1) adds ``model-<k>.safetensors`` for members k = 1, 2, ... and
lists every member in ``meta.json``'s ``members``. Written into a temporary directory and
renamed into place, so a killed run never leaves a half-written model or a partial ensemble.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from neurotransfer.atomic import atomic_directory
from neurotransfer.train.module import OptimConfig, TaskModule

MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"


def member_file(index: int) -> str:
    """File of ensemble member `index`; member 0 is the single model's ``model.safetensors``."""
    return MODEL_FILE if index == 0 else f"model-{index}.safetensors"


def save_task_model(
    modules: TaskModule | Sequence[TaskModule], directory: str | Path, meta: dict[str, Any]
) -> Path:
    """Write one model or an ensemble atomically (temporary sibling folder, then rename).

    With more than one module, ``meta["members"]`` must list one record per module (the
    loader counts members from it).
    """
    members = [modules] if isinstance(modules, TaskModule) else list(modules)
    if not members:
        raise ValueError(f"{directory}: no model to save")
    listed = meta.get("members")
    if len(members) > 1 and (not isinstance(listed, list) or len(listed) != len(members)):
        raise ValueError(
            f"{directory}: {len(members)} ensemble members but meta['members'] lists "
            f"{len(listed) if isinstance(listed, list) else 'none'}"
        )
    with atomic_directory(directory) as tmp:
        for index, module in enumerate(members):
            state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            save_file(state, str(tmp / member_file(index)))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return Path(directory)


def load_task_models(directory: str | Path) -> tuple[list[TaskModule], dict[str, Any]]:
    """Rebuild the saved TaskModule(s) in eval mode, with the metadata: one module for a single
    model, one per member for an ensemble."""
    from neurotransfer.models import TaskHead, build_backbone

    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path}: fine-tuned model file missing (run the finetune stage first)"
        )
    meta = json.loads(meta_path.read_text())
    listed = meta.get("members")
    n_members = len(listed) if isinstance(listed, list) and listed else 1
    modules = []
    for index in range(n_members):
        model_path = directory / member_file(index)
        if not model_path.is_file():
            raise FileNotFoundError(
                f"{model_path}: fine-tuned model file missing (member {index} of {n_members}; "
                "run the finetune stage first)"
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
