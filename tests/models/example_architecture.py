"""A new architecture as a user adds one: this module plus ``conf/model/tiny_stem.yaml``.

Written as it would stand in ``src/neurotransfer/models/tiny_stem.py``.
tests/test_new_architecture.py executes it into a scratch copy of the backbone registry; it is
never imported as part of the test package, so the shipped registry stays as it is for every
other test.

The network: one 3D convolution whose kernel is torchvision ResNet18's first 7x7 convolution
inflated along depth (I3D, summed over RGB), ResNet18's ``bn1`` as its BatchNorm, then global
average pooling. It declares those ImageNet weights as its ``imagenet`` counterpart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from neurotransfer.models.base import Backbone, LayerStage, Shape3D
from neurotransfer.models.external_weights import Counterpart, Mapped, inflate_2d_state
from neurotransfer.models.registry import PositiveInt, register_backbone

RESNET18_STEM_WIDTH = 64


class TinyStem(Backbone):
    """``conv (depth x 7 x 7, stride 2) -> BatchNorm -> ReLU -> global average pool``."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__(out_features=width)
        self.conv = nn.Conv3d(
            1, width, kernel_size=(depth, 7, 7), stride=2, padding=(depth // 2, 3, 3), bias=False
        )
        self.norm = nn.BatchNorm3d(width)
        self.pool = nn.AdaptiveAvgPool3d(1)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.norm(self.conv(volumes)))).flatten(1)

    def layer_stages(self) -> list[LayerStage]:
        return [[self.conv, self.norm]]


def map_resnet18_stem(source: Mapping[str, torch.Tensor], backbone: nn.Module) -> Mapped:
    """ResNet18's ``conv1`` (summed over RGB, inflated to the stem's depth) and ``bn1``; the
    residual layers are reported unused."""
    return inflate_2d_state(
        source, backbone, _stem_key, "conv1.weight", "tiny_stem", "ImageNet resnet18"
    )


def _stem_key(key: str) -> str | None:
    if key == "conv1.weight":
        return "conv.weight"
    if key.startswith("bn1."):
        return "norm." + key.removeprefix("bn1.")
    return None


def stem_width_problem(options: Mapping[str, Any]) -> str:
    """ResNet18's first convolution has 64 output channels: so must the stem."""
    if options["width"] == RESNET18_STEM_WIDTH:
        return ""
    return (
        "pretrain=imagenet initialises tiny_stem from resnet18's first convolution, which is "
        f"{RESNET18_STEM_WIDTH} wide; model.options.width is {options['width']}: set it to "
        f"{RESNET18_STEM_WIDTH}"
    )


IMAGENET_RESNET18_STEM = Counterpart(
    "imagenet", "resnet18", "IMAGENET1K_V1", map_resnet18_stem, stem_width_problem
)


@register_backbone("tiny_stem", external=[IMAGENET_RESNET18_STEM])
def build_tiny_stem(
    input_shape: Shape3D, *, width: PositiveInt = RESNET18_STEM_WIDTH, depth: PositiveInt = 3
) -> TinyStem:
    """The stem ``width`` channels wide with kernels ``depth`` voxels deep; any volume size."""
    return TinyStem(width, depth)
