"""Saving and loading backbone weights without pickle.

A saved backbone is a directory (``models/pretrained/`` in the pipeline) holding
``backbone.safetensors`` (the state dict) and ``meta.json``: the architecture, its resolved
options and the input shape it was built for (enough for :func:`load_backbone` to rebuild it),
plus whatever the caller records (at least ``source``, where the weights come from).
Weights-only torch files (``torch.save`` of a plain state dict) are read too, with
``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from neurotransfer.models.base import Backbone
from neurotransfer.models.registry import build_backbone

WEIGHTS_FILE = "backbone.safetensors"
META_FILE = "meta.json"
# Keys of meta.json that describe the network; they come from the backbone itself.
_SPEC_KEYS = ("architecture", "input_shape", "options", "out_features")
_LISTED = 10  # how many mismatched keys an error message names


def save_backbone(backbone: Backbone, directory: str | Path, meta: Mapping[str, Any]) -> None:
    """Write ``backbone.safetensors`` and ``meta.json`` into ``directory``.

    ``meta`` must hold ``source`` and be JSON-serialisable; the architecture, options, input
    shape and feature size are added from the backbone (given in ``meta`` too, they must
    agree). Each file is written to a temporary name and renamed into place, and the old
    ``meta.json`` is removed first, so a reader never pairs new weights with old metadata.
    """
    spec = getattr(backbone, "spec", None)
    if spec is None:
        raise ValueError(
            f"cannot save a {type(backbone).__name__} without its build record: build backbones "
            "with neurotransfer.models.build_backbone so that meta.json can say how to rebuild it"
        )
    if "source" not in meta:
        raise ValueError(
            "meta must say where the weights come from: add a 'source' key "
            "(e.g. 'synthetic', 'ssl', 'imagenet')"
        )
    record = {
        "architecture": spec.architecture,
        "input_shape": list(spec.input_shape),
        "options": spec.options,
        "out_features": backbone.out_features,
    }
    try:
        given = json.loads(json.dumps(dict(meta)))
    except (TypeError, ValueError) as err:
        raise ValueError(f"meta for {spec.architecture!r} is not JSON-serialisable: {err}") from err
    conflicts = [key for key in _SPEC_KEYS if key in given and given[key] != record[key]]
    if conflicts:
        raise ValueError(
            f"meta contradicts the backbone on {conflicts}: "
            + "; ".join(f"{k}: meta {given[k]!r}, backbone {record[k]!r}" for k in conflicts)
        )
    text = json.dumps({**given, **record}, indent=2, sort_keys=True) + "\n"

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        name: tensor.detach().cpu().contiguous() for name, tensor in backbone.state_dict().items()
    }
    weights_tmp = _temporary_path(directory, WEIGHTS_FILE)
    meta_tmp = _temporary_path(directory, META_FILE)
    try:
        save_file(state, str(weights_tmp), metadata={"architecture": spec.architecture})
        meta_tmp.write_text(text, encoding="utf-8")
        (directory / META_FILE).unlink(missing_ok=True)
        os.replace(weights_tmp, directory / WEIGHTS_FILE)
        os.replace(meta_tmp, directory / META_FILE)
    finally:
        weights_tmp.unlink(missing_ok=True)
        meta_tmp.unlink(missing_ok=True)


def load_backbone(directory: str | Path) -> tuple[Backbone, dict[str, Any]]:
    """Rebuild the backbone saved in ``directory`` and load its weights.

    Returns the backbone (in training mode, like a freshly built one) and the metadata.
    """
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: saved-backbone metadata not found")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path}: not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    missing = [key for key in ("architecture", "input_shape", "options") if key not in meta]
    if missing:
        raise ValueError(f"{meta_path}: missing key(s) {missing}; cannot rebuild the backbone")
    try:
        backbone = build_backbone(meta["architecture"], meta["input_shape"], **meta["options"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{meta_path}: cannot rebuild the saved backbone: {err}") from err
    load_backbone_weights(backbone, directory / WEIGHTS_FILE)
    return backbone, meta


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a state dict from ``path`` (``.safetensors``, else a weights-only torch file).

    Every key of the backbone must be present with the same shape and no other key may be
    there; otherwise ``ValueError`` names the missing, unexpected and mis-shaped keys.
    """
    path = Path(path)
    state = read_state_dict(path)
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{key} (file {list(state[key].shape)}, model {list(expected[key].shape)})"
        for key in set(expected) & set(state)
        if state[key].shape != expected[key].shape
    )
    if missing or unexpected or misshaped:
        spec = getattr(backbone, "spec", None)
        name = spec.architecture if spec is not None else type(backbone).__name__
        problems = [
            f"{label} {len(keys)} key(s): {keys[:_LISTED]}{' ...' if len(keys) > _LISTED else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch in", misshaped),
            )
            if keys
        ]
        raise ValueError(
            f"{path}: weights do not fit backbone {name!r} (different architecture, options or "
            f"input shape?): " + "; ".join(problems)
        )
    backbone.load_state_dict(state, strict=True)


def read_state_dict(path: str | Path, unwrap_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """A flat ``name -> tensor`` state dict from ``.safetensors`` or a weights-only torch file.

    Never unpickles: torch files are read with ``weights_only=True``, and anything that would
    need pickle is refused. With ``unwrap_checkpoint`` (files made elsewhere), a
    ``{"state_dict": ..., "epoch": ...}`` style checkpoint gives its state dict; our own saved
    backbones are flat, so there a nested file is refused. Every problem is a
    ``FileNotFoundError`` or ``ValueError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path}: not a readable safetensors file: {err}") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise ValueError(
            f"{path}: not a weights-only torch file (loading it would need pickle, which is "
            f"refused; save a plain state dict or safetensors): {err}"
        ) from err
    nested = isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping)
    if unwrap_checkpoint and nested:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise ValueError(
            f"{path}: expected a state dict (a flat mapping of parameter names to tensors), "
            f"got {type(state).__name__}"
        )
    return dict(state)


def _temporary_path(directory: Path, name: str) -> Path:
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(handle)
    return Path(temporary)
