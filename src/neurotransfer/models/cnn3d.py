"""3D convolutional backbones: DenseNet121 (MONAI) as in the papers, and a compact SFCN.

External weights: ``imagenet`` initialises DenseNet121 by I3D inflation of torchvision's 2D
``densenet121`` (:func:`map_densenet121`); SFCN has no pre-trained counterpart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated

import torch
from monai.networks.nets import DenseNet
from pydantic import Field
from torch import nn

from neurotransfer.models.base import Backbone, LayerStage, Shape3D, require_min_side
from neurotransfer.models.external_weights import Counterpart, Mapped, State, inflate_2d_state
from neurotransfer.models.registry import DropoutRate, PositiveInt, register_backbone


class SFCN(Backbone):
    """Simple Fully Convolutional Network (Peng et al. 2021, Med. Image Anal. 68:101871).

    Blocks of ``conv3x3x3 -> BatchNorm -> MaxPool(2) -> ReLU`` for every width but the last,
    whose block is ``conv1x1x1 -> BatchNorm -> ReLU``; then global average pooling and dropout.
    The paper's widths are ``(32, 64, 128, 256, 256, 64)``; narrower widths keep the same shape
    of network and are what the CPU profile uses. Its classifier (a 1x1x1 convolution to age
    bins) is left to the task head.
    """

    def __init__(self, channels: tuple[int, ...], dropout: float) -> None:
        super().__init__(out_features=channels[-1])
        blocks: list[nn.Module] = []
        in_channels = 1
        for index, width in enumerate(channels):
            if index < len(channels) - 1:
                # No conv bias: the BatchNorm right after it has its own shift.
                block = nn.Sequential(
                    nn.Conv3d(in_channels, width, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm3d(width),
                    nn.MaxPool3d(kernel_size=2, stride=2),
                    nn.ReLU(inplace=True),
                )
            else:
                block = nn.Sequential(
                    nn.Conv3d(in_channels, width, kernel_size=1, bias=False),
                    nn.BatchNorm3d(width),
                    nn.ReLU(inplace=True),
                )
            blocks.append(block)
            in_channels = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.pool(self.blocks(volumes)).flatten(1))

    def layer_stages(self) -> list[LayerStage]:
        return [[block] for block in self.blocks]


@register_backbone("sfcn")
def build_sfcn(
    input_shape: Shape3D,
    *,
    channels: Annotated[tuple[PositiveInt, ...], Field(min_length=2)] = (32, 64, 128, 256, 256, 64),
    dropout: DropoutRate = 0.5,
) -> SFCN:
    """SFCN with the given block widths; ``dropout`` (0.5 in the paper) acts on the features."""
    pools = len(channels) - 1
    require_min_side(
        "sfcn",
        input_shape,
        2**pools,
        why=f"its {len(channels)} blocks max-pool by 2 {pools} times",
        fix="use larger volumes or fewer entries in `channels`",
    )
    return SFCN(tuple(channels), dropout)


class DenseNet3D(Backbone):
    """3D DenseNet from MONAI (DenseNet121 with the default block configuration), as used by
    Dhinagar et al. 2023. The features are MONAI's ``features -> ReLU -> global average
    pool``, i.e. the network up to (not including) its final linear layer."""

    def __init__(
        self,
        init_features: int,
        growth_rate: int,
        block_config: tuple[int, ...],
        bn_size: int,
        dropout: float,
    ) -> None:
        net = DenseNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=1,  # the linear layer this sizes is replaced below
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=block_config,
            bn_size=bn_size,
            dropout_prob=dropout,
        )
        super().__init__(out_features=net.class_layers.out.in_features)
        net.class_layers.out = nn.Identity()
        self.net = net

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        return self.net(volumes)

    def layer_stages(self) -> list[LayerStage]:
        features = dict(self.net.features.named_children())
        stages: list[LayerStage] = [[features["conv0"], features["norm0"]]]
        block_names = [name for name in features if name.startswith("denseblock")]
        for name in block_names:
            stage = [features[name]]
            transition = name.replace("denseblock", "transition")
            if transition in features:
                stage.append(features[transition])
            stages.append(stage)
        stages[-1].append(features["norm5"])
        return stages


# Old torchvision DenseNet checkpoints name layers `norm.1` instead of `norm1` (torchvision
# rewrites them with this pattern when it loads them itself).
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def normalise_densenet_keys(source: Mapping[str, torch.Tensor]) -> State:
    out: State = {}
    for key, value in source.items():
        match = _DENSENET_OLD_KEY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def map_densenet121(source: Mapping[str, torch.Tensor], backbone: nn.Module) -> Mapped:
    """MONAI's 3D DenseNet121 from torchvision's DenseNet121 by I3D inflation: ``conv0`` 7x7 ->
    7x7x7 (summed over RGB), dense-layer convolutions 1x1 -> 1x1x1 and 3x3 -> 3x3x3,
    transitions 1x1 -> 1x1x1; MONAI nests each dense layer's modules under ``layers``."""
    return inflate_2d_state(
        normalise_densenet_keys(source),
        backbone,
        lambda key: "net." + re.sub(r"(denselayer\d+)\.", r"\1.layers.", key),
        "features.conv0.weight",
        "densenet121",
        "ImageNet densenet121",
    )


IMAGENET_DENSENET121 = Counterpart("imagenet", "densenet121", "IMAGENET1K_V1", map_densenet121)


@register_backbone("densenet121", external=[IMAGENET_DENSENET121])
def build_densenet121(
    input_shape: Shape3D,
    *,
    init_features: PositiveInt = 64,
    growth_rate: PositiveInt = 32,
    block_config: Annotated[tuple[PositiveInt, ...], Field(min_length=1)] = (6, 12, 24, 16),
    bn_size: PositiveInt = 4,
    dropout: DropoutRate = 0.0,
) -> DenseNet3D:
    """DenseNet121 for 3D volumes; ``dropout`` is MONAI's dropout inside the dense layers."""
    transitions = len(block_config) - 1
    # The stem (conv stride 2, max-pool stride 2, both padded) maps a side n to ceil(n / 4);
    # each transition then average-pools by 2 and needs at least 2 voxels to do so.
    min_side = 4 * 2**transitions - 3
    require_min_side(
        "densenet121",
        input_shape,
        min_side,
        why=(
            f"its stem downsamples by 4 and its {transitions} transition layers by 2 each "
            f"(stride 2^{transitions + 2} in all)"
        ),
        fix="use larger volumes or fewer dense blocks in `block_config`",
    )
    return DenseNet3D(init_features, growth_rate, tuple(block_config), bn_size, dropout)
