"""Save and load a fine-tuned task model (backbone + head) without pickle.

Layout of ``models/finetuned/<task>/``: ``model.safetensors`` (the whole TaskModule state:
backbone, head and the regression target scaling) and ``meta.json`` (everything needed to
rebuild the modules: architecture, options, input shape, task kind). Written into a temporary
directory and renamed into place, so a killed run never leaves a half-written model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from neurotransfer.atomic import atomic_directory
from neurotransfer.train.module import OptimConfig, TaskModule

MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"


def save_task_model(module: TaskModule, directory: str | Path, meta: dict[str, Any]) -> Path:
    """Write the model atomically (temporary sibling folder, then rename over `directory`)."""
    with atomic_directory(directory) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(tmp / MODEL_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return Path(directory)


def load_task_model(directory: str | Path) -> tuple[TaskModule, dict[str, Any]]:
    """Rebuild a saved TaskModule in eval mode, with its metadata."""
    from neurotransfer.models import TaskHead, build_backbone

    directory = Path(directory)
    model_path, meta_path = directory / MODEL_FILE, directory / META_FILE
    for path in (model_path, meta_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: fine-tuned model file missing (run the finetune stage first)"
            )
    meta = json.loads(meta_path.read_text())
    backbone = build_backbone(meta["model"], tuple(meta["input_shape"]), **meta["model_options"])
    head = TaskHead(backbone.out_features, dropout=meta.get("head_dropout", 0.0))
    module = TaskModule(backbone, head, meta["kind"], OptimConfig())
    state = load_file(str(model_path))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{model_path}: weights do not match model {meta['model']!r}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    module.eval()
    return module, meta
