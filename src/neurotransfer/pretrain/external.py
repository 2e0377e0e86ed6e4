"""External (torchvision) weights: from torchvision's cache / download, or from a local file.

Online, the weights come from ``torchvision.models.get_model_weights(model)[member]``, which
downloads the official file into torch's hub cache once (``~/.cache/torch/hub/checkpoints``)
and reads it from there afterwards. Offline, ``pretrain.weights_path`` names a local copy of
that file: safetensors, or a torch file holding a plain state dict, read with
``torch.load(..., weights_only=True)``. Nothing is ever unpickled: a file that would need
pickle is refused. When neither works the error names the architecture, the weights enum
member and the expected file name, and says how to set ``pretrain.weights_path``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torchvision.models import get_model_weights

from neurotransfer.config import SettingsError
from neurotransfer.models.weights import read_state_dict as read_weights_file
from neurotransfer.pretrain.data import file_sha256
from neurotransfer.pretrain.sources import counterpart

log = logging.getLogger(__name__)


class WeightsUnavailableError(SettingsError):
    """External weights that can be neither downloaded nor read from ``weights_path``."""


@dataclass(frozen=True)
class ExternalWeights:
    """A state dict and where it came from (recorded in ``meta.json``)."""

    state: dict[str, torch.Tensor]
    record: dict[str, Any]


def weights_member(model: str, name: str) -> Any:
    """The member ``name`` of torchvision's weights enum for ``model`` (``IMAGENET1K_V1``...)."""
    enum = get_model_weights(model)
    try:
        return enum[name]
    except KeyError:
        raise SettingsError(
            f"pretrain.weights: {enum.__name__} has no member {name!r}; choose one of "
            f"{[member.name for member in enum]} (or null for the default)"
        ) from None


def expected_file_name(member: Any) -> str:
    """The file name torchvision downloads for ``member`` (e.g. ``resnet18-f37072fd.pth``)."""
    return Path(urlparse(member.url).path).name


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``pretrain.weights_path``, its problems named as that setting's.

    Read by :func:`neurotransfer.models.weights.read_state_dict` (safetensors or weights-only
    torch, pickle refused, ``{"state_dict": ...}`` checkpoints unwrapped).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"pretrain.weights_path: {path} does not exist")
    try:
        return read_weights_file(path, unwrap_checkpoint=True)
    except ValueError as err:
        raise WeightsUnavailableError(f"pretrain.weights_path: {err}") from err


def download_state_dict(member: Any) -> dict[str, torch.Tensor]:
    """torchvision's own download (into torch's hub cache, reused when already there)."""
    return dict(member.get_state_dict(progress=False, weights_only=True))


def external_weights(
    source: str, architecture: str, weights: str | None, weights_path: str | None
) -> ExternalWeights:
    """The torchvision state dict that initialises ``architecture`` for ``source``."""
    model = counterpart(source, architecture)
    name = weights or model.default_weights
    member = weights_member(model.model, name)
    enum_name = f"{type(member).__name__}.{member.name}"
    file_name = expected_file_name(member)
    record: dict[str, Any] = {
        "torchvision_model": model.model,
        "weights": enum_name,
        "url": member.url,
    }
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        state = read_state_dict(path)
        record.update(weights_file=str(path), weights_sha256=file_sha256(path))
        log.info("read %s for %s from %s", enum_name, architecture, path)
        return ExternalWeights(state, record)
    try:
        state = download_state_dict(member)
    except Exception as err:  # no network, proxy, corrupt cache: all end the same way
        raise WeightsUnavailableError(
            f"cannot obtain the {source} weights for model {architecture!r}: torchvision "
            f"{enum_name} ({model.model}) could not be downloaded from {member.url} "
            f"({type(err).__name__}: {err}). Offline, copy the file {file_name} to this machine "
            f"and set pretrain.weights_path to it, e.g. `dvc exp run -S pretrain={source} "
            f"-S pretrain.weights_path=/path/{file_name}` (safetensors or a weights-only torch "
            "file are accepted)"
        ) from err
    cached = _hub_file(file_name)
    record["weights_file"] = str(cached) if cached is not None else None
    record["weights_sha256"] = file_sha256(cached) if cached is not None else None
    return ExternalWeights(state, record)


def _hub_file(file_name: str) -> Path | None:
    path = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    return path if path.is_file() else None
