"""The 2D slice-set network of Gupta et al. (ISBI 2021; position-encoded, ISBI 2023).

Every slice of the volume along one axis goes through the same 2D encoder; the slice encodings
are projected to ``embed_dim``, a learned embedding of the slice position is added (ISBI 2023),
and a permutation-invariant pooling (mean, max, or attention with a learned query) turns the
set of slices into one feature vector. Follows github.com/umgupta/2d-slice-set-networks:

- ``encoder="resnet18"``: torchvision ResNet18 without its classifier. Their code repeats the
  grey slice over three channels; here the first convolution is adapted to one channel by
  summing its kernels over RGB (:func:`adapt_first_conv_to_single_channel`), which computes the
  same thing.
- ``encoder="cnn"``: their small "encoder1": blocks of ``conv3x3 -> InstanceNorm -> MaxPool(2)
  -> ReLU`` (widths ``cnn_channels``), then global average pooling. (Their version adds a
  1x1 convolution to 64 channels before pooling; the linear projection that follows does
  that job here.)
- position embedding: one learned ``embed_dim`` vector per slice index, added to the slice
  encodings and followed by a LayerNorm over the whole (slice, feature) map, as in their
  ``PositionEncodingUKBB``. Without it the network is invariant to the order of the slices.
- ``pooling="attention"``: pooling by multi-head attention with one learned query, LayerNorm
  and an output projection (their ``PooledAttention``; ``torch.nn.MultiheadAttention`` here,
  which also projects the query).

The defaults are those of the ISBI 2023 scripts: ResNet18, ``embed_dim=32``, mean pooling,
position embedding on, slicing along the first axis (sagittal for RAS-ordered arrays).

External weights: ``imagenet`` initialises the ResNet18 slice encoder with torchvision's
``resnet18`` ImageNet weights as they are (conv1 summed over RGB).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn
from torchvision.models import resnet18

from neurotransfer.backbone_rules import resnet18_encoder_problem
from neurotransfer.models.adaptation import adapt_first_conv_to_single_channel
from neurotransfer.models.base import Backbone, LayerStage, Shape3D
from neurotransfer.models.external_weights import (
    Counterpart,
    Mapped,
    State,
    assemble,
    sum_rgb,
    without_heads,
)
from neurotransfer.models.registry import DropoutRate, PositiveInt, register_backbone


class ResNet18SliceEncoder(nn.Module):
    """torchvision ResNet18 on one-channel slices, returning its 512 pooled features."""

    out_features = 512

    def __init__(self) -> None:
        super().__init__()
        net = resnet18(weights=None)
        net.conv1 = adapt_first_conv_to_single_channel(net.conv1)
        net.fc = nn.Identity()
        self.net = net

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        return self.net(slices)

    def layer_stages(self) -> list[LayerStage]:
        net = self.net
        return [[net.conv1, net.bn1], [net.layer1], [net.layer2], [net.layer3], [net.layer4]]


class ConvSliceEncoder(nn.Module):
    """Gupta et al.'s small 2D encoder: ``conv3x3 -> InstanceNorm -> MaxPool(2) -> ReLU``
    blocks and global average pooling."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.out_features = channels[-1]
        blocks = []
        in_channels = 1
        for width in channels:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
                    nn.InstanceNorm2d(width),
                    nn.MaxPool2d(kernel_size=2, stride=2),
                    nn.ReLU(inplace=True),
                )
            )
            in_channels = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(slices)).flatten(1)

    def layer_stages(self) -> list[LayerStage]:
        return [[block] for block in self.blocks]


class AttentionPooling(nn.Module):
    """Pooling by multi-head attention: one learned query attends over the set of slices."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.xavier_uniform_(self.query)
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        query = self.query.expand(tokens.shape[0], -1, -1)
        pooled, _ = self.attention(query, tokens, tokens, need_weights=False)
        return self.out(self.norm(pooled[:, 0]))


class SliceSetNetwork(Backbone):
    """A volume as the set of its slices along ``axis`` (0, 1, 2 = D, H, W of the volume)."""

    def __init__(
        self,
        input_shape: Shape3D,
        axis: int,
        encoder: nn.Module,
        embed_dim: int,
        position_embedding: bool,
        pooling: Literal["mean", "max", "attention"],
        attention_heads: int,
        dropout: float,
    ) -> None:
        super().__init__(out_features=embed_dim)
        self.axis = axis
        self.num_slices = input_shape[axis]
        self.encoder = encoder
        self.projection = nn.Linear(encoder.out_features, embed_dim)
        self.position_embedding: nn.Parameter | None = None
        self.position_norm: nn.LayerNorm | None = None
        if position_embedding:
            self.position_embedding = nn.Parameter(torch.empty(self.num_slices, embed_dim))
            # Their Kaiming (fan-out, linear) initialisation: std = 1 / sqrt(number of slices).
            nn.init.normal_(self.position_embedding, std=self.num_slices**-0.5)
            self.position_norm = nn.LayerNorm([self.num_slices, embed_dim])
        self.pooling = pooling
        self.attention_pool = (
            AttentionPooling(embed_dim, attention_heads) if pooling == "attention" else None
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        slices = volumes[:, 0].movedim(self.axis + 1, 1)  # [B, S, h, w]
        batch, num_slices, height, width = slices.shape
        if num_slices != self.num_slices:
            raise ValueError(
                f"slice2d was built for {self.num_slices} slices along axis {self.axis}, "
                f"got a volume batch of shape {tuple(volumes.shape)}"
            )
        encodings = self.encoder(slices.reshape(batch * num_slices, 1, height, width))
        tokens = self.projection(encodings).reshape(batch, num_slices, -1)
        if self.position_embedding is not None and self.position_norm is not None:
            tokens = self.position_norm(tokens + self.position_embedding)
        if self.attention_pool is not None:
            pooled = self.attention_pool(tokens)
        elif self.pooling == "max":
            pooled = tokens.amax(dim=1)
        else:
            pooled = tokens.mean(dim=1)
        return self.dropout(pooled)

    def layer_stages(self) -> list[LayerStage]:
        head: list[nn.Module | nn.Parameter] = [self.projection]
        if self.position_embedding is not None and self.position_norm is not None:
            head += [self.position_embedding, self.position_norm]
        if self.attention_pool is not None:
            head.append(self.attention_pool)
        return [*self.encoder.layer_stages(), head]


def map_resnet18_slice2d(source: Mapping[str, torch.Tensor], backbone: nn.Module) -> Mapped:
    """slice2d's ResNet18 slice encoder takes the 2D weights as they are (conv1 summed over RGB);
    the slice projection, position embedding and pooling keep their own initialisation."""
    mapped: State = {}
    for key, value in without_heads(source).items():
        mapped[f"encoder.net.{key}"] = sum_rgb(value) if key == "conv1.weight" else value
    return assemble(
        backbone.state_dict(),
        mapped,
        [],
        "slice2d",
        "ImageNet resnet18",
        own_init=lambda k: not k.startswith("encoder."),
    )


IMAGENET_RESNET18 = Counterpart(
    "imagenet", "resnet18", "IMAGENET1K_V1", map_resnet18_slice2d, resnet18_encoder_problem
)


@register_backbone("slice2d", external=[IMAGENET_RESNET18])
def build_slice2d(
    input_shape: Shape3D,
    *,
    axis: Literal[0, 1, 2] = 0,
    encoder: Literal["resnet18", "cnn"] = "resnet18",
    cnn_channels: Annotated[tuple[PositiveInt, ...], Field(min_length=1)] = (
        32,
        64,
        128,
        256,
        256,
    ),
    embed_dim: PositiveInt = 32,
    position_embedding: bool = True,
    pooling: Literal["mean", "max", "attention"] = "mean",
    attention_heads: PositiveInt = 1,
    dropout: DropoutRate = 0.0,
) -> SliceSetNetwork:
    """Slice-set network; ``cnn_channels`` applies to ``encoder="cnn"`` only and
    ``attention_heads`` to ``pooling="attention"`` only."""
    slice_shape = tuple(side for index, side in enumerate(input_shape) if index != axis)
    if encoder == "cnn":
        min_side = 2 ** len(cnn_channels)
        if min(slice_shape) < min_side:
            raise ValueError(
                f"backbone 'slice2d': slices along axis {axis} of input_shape {input_shape} are "
                f"{slice_shape}, but the 'cnn' encoder max-pools by 2 {len(cnn_channels)} times, "
                f"so both slice sides must be at least {min_side} voxels; use larger volumes, "
                "another axis, or fewer entries in `cnn_channels`"
            )
        slice_encoder: nn.Module = ConvSliceEncoder(tuple(cnn_channels))
    else:
        slice_encoder = ResNet18SliceEncoder()
    if pooling == "attention" and embed_dim % attention_heads:
        raise ValueError(
            f"backbone 'slice2d': embed_dim {embed_dim} is not divisible by attention_heads "
            f"{attention_heads}"
        )
    return SliceSetNetwork(
        input_shape,
        axis,
        slice_encoder,
        embed_dim,
        position_embedding,
        pooling,
        attention_heads,
        dropout,
    )
