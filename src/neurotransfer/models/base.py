"""What every backbone is: an ``nn.Module`` mapping ``[B, 1, D, H, W]`` to ``[B, F]``.

A backbone also records how it was built (:class:`BackboneSpec`, filled in by
``build_backbone``) so that its weights can be saved with enough metadata to rebuild it, and it
says how its parameters split into layers from input to output (for layer-wise LR decay).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Shape3D = tuple[int, int, int]

# A stage of a backbone, as a family lists it for layer-wise LR decay: modules and/or loose
# parameters (class tokens, position embeddings) that belong to the same depth.
LayerStage = Sequence[nn.Module | nn.Parameter]


@dataclass(frozen=True)
class BackboneSpec:
    """How a backbone was built: enough to build it again (``meta.json`` of saved weights).

    ``options`` holds every option with its resolved value (defaults included) in JSON form,
    so a checkpoint keeps describing the same network if a default changes later.
    """

    architecture: str
    input_shape: Shape3D
    options: dict[str, Any] = field(default_factory=dict)


class Backbone(nn.Module, ABC):
    """Base class of all backbones: ``forward([B, 1, D, H, W]) -> [B, out_features]``."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = int(out_features)
        # Set by ``build_backbone``; a backbone built by hand has no spec and cannot be saved.
        self.spec: BackboneSpec | None = None

    @abstractmethod
    def layer_stages(self) -> list[LayerStage]:
        """The backbone's parameters as stages ordered from input to output.

        Every parameter must appear in exactly one stage; :func:`backbone_layer_groups` checks.
        """


def backbone_layer_groups(backbone: nn.Module) -> list[list[nn.Parameter]]:
    """Parameter groups ordered from input to output, each parameter in exactly one group.

    Used for layer-wise learning-rate decay: the optimiser gives group ``i`` of ``n`` the rate
    ``lr * decay ** (n - 1 - i)``. Stages without parameters are left out.
    """
    if not isinstance(backbone, Backbone):
        raise TypeError(
            f"backbone_layer_groups needs a neurotransfer Backbone (from build_backbone), "
            f"got {type(backbone).__name__}"
        )
    groups: list[list[nn.Parameter]] = []
    seen: dict[int, int] = {}  # id(parameter) -> index of the stage that holds it
    for stage_index, stage in enumerate(backbone.layer_stages()):
        params: list[nn.Parameter] = []
        for item in stage:
            candidates = [item] if isinstance(item, nn.Parameter) else list(item.parameters())
            for param in candidates:
                if id(param) in seen:
                    raise RuntimeError(
                        f"{type(backbone).__name__}.layer_stages lists a parameter twice "
                        f"(stages {seen[id(param)]} and {stage_index})"
                    )
                seen[id(param)] = stage_index
                params.append(param)
        if params:
            groups.append(params)
    names = {id(p): name for name, p in backbone.named_parameters()}
    missing = sorted(name for pid, name in names.items() if pid not in seen)
    if missing:
        raise RuntimeError(
            f"{type(backbone).__name__}.layer_stages leaves parameters out: {missing[:10]}"
        )
    return groups


def require_min_side(name: str, input_shape: Shape3D, min_side: int, why: str, fix: str) -> None:
    """Fail with a clear message when a volume side is below what the network's
    downsampling can take (``why`` says which layers, ``fix`` what would work)."""
    too_small = [side for side in input_shape if side < min_side]
    if too_small:
        raise ValueError(
            f"backbone {name!r}: input_shape {tuple(input_shape)} is too small: {why}, so every "
            f"side must be at least {min_side} voxels (got {too_small}); {fix}"
        )


def require_volume_shape(name: str, volumes: torch.Tensor, input_shape: Shape3D) -> None:
    """For networks whose size is fixed at build time (position embeddings, token grids): a
    clear error instead of a tensor-size mismatch deep inside the network."""
    if volumes.ndim != 5 or volumes.shape[1] != 1 or tuple(volumes.shape[2:]) != input_shape:
        raise ValueError(
            f"{name} was built for volumes of shape [B, 1, {', '.join(map(str, input_shape))}], "
            f"got a batch of shape {list(volumes.shape)}"
        )
