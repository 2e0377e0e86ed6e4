"""Video backbones from torchvision, adapted to one-channel volumes.

A volume ``[B, 1, D, H, W]`` is read as a one-channel clip of ``D`` frames of ``H x W``
(torchvision's ``[B, C, T, H, W]``), so the first volume axis plays the role of time. The
first convolution of each network is adapted from RGB to one channel by summing its kernels
(:func:`adapt_first_conv_to_single_channel`), which keeps Kinetics weights usable.

- ``r3d_18`` / ``r2plus1d_18``: 3D and (2+1)D ResNet-18 (Tran et al. 2018); any volume size.
- ``swin3d_t``: Video Swin Transformer, tiny; torchvision pads every stage to whole patches
  and windows and shrinks windows larger than the input, so any volume size works.
- ``mvit_v2_s``: Multiscale Vision Transformer v2, small. torchvision sizes its token grid at
  construction from the clip size and needs every side to be a whole number of patch strides
  ``(2, 4, 4)``; the network is therefore built for the volume shape rounded up to those
  multiples, and ``forward`` pads the volume with zeros (as the patch embedding's own padding
  does) at the far end of each axis: at most 1 voxel in D and 3 in H and W. H and W must also
  leave at least one token per axis after the query pooling of every stage.

External weights: ``kinetics`` initialises each network from torchvision's Kinetics-400
weights of the same name (:func:`map_video`); ``imagenet`` initialises ``r3d_18`` by I3D
inflation of torchvision's 2D ``resnet18`` (:func:`map_resnet18_r3d`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torchvision.models.video.mvit import MSBlockConfig, MViT
from torchvision.models.video.resnet import (
    BasicBlock,
    BasicStem,
    Conv2Plus1D,
    Conv3DSimple,
    R2Plus1dStem,
    VideoResNet,
)
from torchvision.models.video.swin_transformer import SwinTransformer3d

from neurotransfer.models.adaptation import adapt_first_conv_to_single_channel
from neurotransfer.models.base import Backbone, LayerStage, Shape3D, require_volume_shape
from neurotransfer.models.external_weights import (
    Counterpart,
    Mapped,
    State,
    assemble,
    inflate_2d_state,
    sum_rgb,
    without_heads,
)
from neurotransfer.models.registry import PositiveInt, register_backbone

FourInts = tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt]
ThreeInts = tuple[PositiveInt, PositiveInt, PositiveInt]
StageInts = Annotated[tuple[PositiveInt, ...], Field(min_length=1)]
DropPathRate = Annotated[float, Field(ge=0.0, lt=1.0)]


_REL_POS = re.compile(r"\.rel_pos_[thw]$")


def map_video(source: Mapping[str, torch.Tensor], backbone: nn.Module, architecture: str) -> Mapped:
    """A torchvision video network into its neurotransfer wrapper (``net.`` prefix).

    The first convolution (``[O, 3, ...]``) is summed over RGB; MViT's relative-position tables,
    sized at construction for 16x224x224 clips, are linearly interpolated to the sizes this
    volume's token grid needs (as MViTv2 does for other input sizes).
    """
    target = backbone.state_dict()
    mapped: State = {}
    for key, value in without_heads(source).items():
        new = f"net.{key}"
        if new in target:
            wanted = target[new]
            if value.ndim >= 3 and value.shape[1] == 3 and wanted.shape[1] == 1:
                value = sum_rgb(value)
            elif _REL_POS.search(key) and value.shape[0] != wanted.shape[0]:
                value = (
                    F.interpolate(
                        value.float().T.unsqueeze(0),
                        size=wanted.shape[0],
                        mode="linear",
                        align_corners=False,
                    )[0]
                    .T.contiguous()
                    .to(value.dtype)
                )
        mapped[new] = value
    return assemble(target, mapped, [], architecture, f"Kinetics-400 {architecture}")


def kinetics(architecture: str) -> Counterpart:
    """torchvision's Kinetics-400 weights of the video network of the same name."""
    return Counterpart(
        "kinetics",
        architecture,
        "KINETICS400_V1",
        partial(map_video, architecture=architecture),
    )


_RESNET_BLOCK = re.compile(r"^(layer\d+\.\d+)\.(conv1|bn1|conv2|bn2|downsample\.[01])\.(.+)$")


def map_resnet18_r3d(source: Mapping[str, torch.Tensor], backbone: nn.Module) -> Mapped:
    """torchvision VideoResNet (``r3d_18``) from a 2D ResNet18 by I3D inflation.

    Stem: ``conv1`` (7x7) -> ``stem.0`` (3x7x7, summed over RGB), ``bn1`` -> ``stem.1``; each
    basic block's ``conv1/bn1/conv2/bn2`` -> ``conv1.0/conv1.1/conv2.0/conv2.1`` (3x3 ->
    3x3x3), ``downsample`` as is (1x1 -> 1x1x1). VideoResNet has no max-pool after its stem, so
    the 3D network sees twice the 2D network's resolution from ``layer1`` on.
    """
    return inflate_2d_state(
        source, backbone, _r3d_key, "conv1.weight", "r3d_18", "ImageNet resnet18"
    )


def _r3d_key(key: str) -> str | None:
    """Where a 2D ResNet18 key goes in the r3d_18 backbone (None: nowhere)."""
    if key.startswith("conv1."):
        return "net.stem.0." + key.removeprefix("conv1.")
    if key.startswith("bn1."):
        return "net.stem.1." + key.removeprefix("bn1.")
    match = _RESNET_BLOCK.match(key)
    if match is None:
        return None
    block, layer, rest = match.groups()
    layer = {"conv1": "conv1.0", "bn1": "conv1.1", "conv2": "conv2.0", "bn2": "conv2.1"}.get(
        layer, layer
    )
    return f"net.{block}.{layer}.{rest}"


IMAGENET_RESNET18_INFLATED = Counterpart("imagenet", "resnet18", "IMAGENET1K_V1", map_resnet18_r3d)


def _require_two_blocks(name: str, depths: tuple[int, ...]) -> None:
    # torchvision spreads stochastic depth linearly over blocks, dividing by (blocks - 1).
    if sum(depths) < 2:
        raise ValueError(
            f"backbone {name!r}: depths {tuple(depths)} give {sum(depths)} block(s); "
            "torchvision needs at least 2 in all"
        )


class VideoResNetBackbone(Backbone):
    """torchvision VideoResNet (BasicBlock) without its classifier: 512 pooled features."""

    def __init__(
        self, conv_maker: type[nn.Module], stem: type[nn.Module], layers: tuple[int, ...]
    ) -> None:
        net = VideoResNet(BasicBlock, [conv_maker] * 4, list(layers), stem)
        super().__init__(out_features=net.fc.in_features)
        net.stem[0] = adapt_first_conv_to_single_channel(net.stem[0])
        net.fc = nn.Identity()
        self.net = net

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        return self.net(volumes)

    def layer_stages(self) -> list[LayerStage]:
        net = self.net
        return [[net.stem], [net.layer1], [net.layer2], [net.layer3], [net.layer4]]


@register_backbone("r3d_18", external=[IMAGENET_RESNET18_INFLATED, kinetics("r3d_18")])
def build_r3d_18(input_shape: Shape3D, *, layers: FourInts = (2, 2, 2, 2)) -> Backbone:
    """3D ResNet-18; ``layers`` = residual blocks per stage ((1, 1, 1, 1) gives a ResNet-10)."""
    return VideoResNetBackbone(Conv3DSimple, BasicStem, layers)


@register_backbone("r2plus1d_18", external=[kinetics("r2plus1d_18")])
def build_r2plus1d_18(input_shape: Shape3D, *, layers: FourInts = (2, 2, 2, 2)) -> Backbone:
    """(2+1)D ResNet-18: each 3D convolution factorised into spatial then temporal (D-axis)."""
    return VideoResNetBackbone(Conv2Plus1D, R2Plus1dStem, layers)


class Swin3DBackbone(Backbone):
    """torchvision's Video Swin Transformer without its classifier: the final-norm features,
    average-pooled over all tokens (``embed_dim * 2 ** (stages - 1)`` of them)."""

    def __init__(
        self,
        patch_size: ThreeInts,
        embed_dim: int,
        depths: tuple[int, ...],
        num_heads: tuple[int, ...],
        window_size: ThreeInts,
        stochastic_depth_prob: float,
    ) -> None:
        net = SwinTransformer3d(
            patch_size=list(patch_size),
            embed_dim=embed_dim,
            depths=list(depths),
            num_heads=list(num_heads),
            window_size=list(window_size),
            stochastic_depth_prob=stochastic_depth_prob,
        )
        super().__init__(out_features=net.num_features)
        net.patch_embed.proj = adapt_first_conv_to_single_channel(net.patch_embed.proj)
        net.head = nn.Identity()
        self.net = net

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        return self.net(volumes)

    def layer_stages(self) -> list[LayerStage]:
        net = self.net
        return [[net.patch_embed], *([stage] for stage in net.features), [net.norm]]


@register_backbone("swin3d_t", external=[kinetics("swin3d_t")])
def build_swin3d_t(
    input_shape: Shape3D,
    *,
    patch_size: ThreeInts = (2, 4, 4),
    embed_dim: PositiveInt = 96,
    depths: StageInts = (2, 2, 6, 2),
    num_heads: StageInts = (3, 6, 12, 24),
    window_size: ThreeInts = (8, 7, 7),
    stochastic_depth_prob: DropPathRate = 0.1,
) -> Backbone:
    """Swin3D-T by default; ``depths`` and ``num_heads`` give one entry per stage, and stage
    ``i`` is ``embed_dim * 2**i`` wide."""
    _require_two_blocks("swin3d_t", depths)
    if len(depths) != len(num_heads):
        raise ValueError(
            f"backbone 'swin3d_t': depths {tuple(depths)} and num_heads {tuple(num_heads)} "
            "must give one entry per stage each"
        )
    for stage, heads in enumerate(num_heads):
        width = embed_dim * 2**stage
        if width % heads:
            raise ValueError(
                f"backbone 'swin3d_t': stage {stage} is {width} wide (embed_dim * 2**{stage}), "
                f"which num_heads[{stage}] = {heads} does not divide"
            )
    return Swin3DBackbone(
        tuple(patch_size),
        embed_dim,
        tuple(depths),
        tuple(num_heads),
        tuple(window_size),
        stochastic_depth_prob,
    )


# MViT-v2 patch embedding: kernel (3, 7, 7), stride (2, 4, 4), padding (1, 3, 3) (torchvision).
MVIT_PATCH_STRIDE = (2, 4, 4)


def mvit_v2_block_settings(
    embed_dim: int, depths: tuple[int, ...], num_heads: int, kv_stride: int
) -> list[MSBlockConfig]:
    """MViT-v2 blocks stage by stage, the rule behind torchvision's ``mvit_v2_s`` table.

    Stage ``i`` is ``embed_dim * 2**i`` wide with ``num_heads * 2**i`` heads; its first block
    (from the second stage on) doubles the width and pools the queries by 2 in H and W; keys
    and values are pooled by ``kv_stride / 2**i`` (at least 1) in H and W. With
    ``(96, (1, 2, 11, 2), 1, 8)`` this is exactly ``mvit_v2_s``.
    """
    blocks = []
    for stage, depth in enumerate(depths):
        width = embed_dim * 2**stage
        stage_kv = max(kv_stride // 2**stage, 1)
        for index in range(depth):
            opens_stage = stage > 0 and index == 0
            blocks.append(
                MSBlockConfig(
                    num_heads=num_heads * 2**stage,
                    input_channels=width // 2 if opens_stage else width,
                    output_channels=width,
                    kernel_q=[3, 3, 3],
                    kernel_kv=[3, 3, 3],
                    stride_q=[1, 2, 2] if opens_stage else [1, 1, 1],
                    stride_kv=[1, stage_kv, stage_kv],
                )
            )
    return blocks


class MViTBackbone(Backbone):
    """torchvision MViT-v2 without its classifier: the final-norm class token."""

    def __init__(
        self,
        input_shape: Shape3D,
        embed_dim: int,
        depths: tuple[int, ...],
        num_heads: int,
        kv_stride: int,
        stochastic_depth_prob: float,
    ) -> None:
        # Round each side up to whole patch strides (see the module docstring).
        padded_shape = tuple(
            -(-side // stride) * stride
            for side, stride in zip(input_shape, MVIT_PATCH_STRIDE, strict=True)
        )
        net = MViT(
            spatial_size=(padded_shape[1], padded_shape[2]),
            temporal_size=padded_shape[0],
            block_setting=mvit_v2_block_settings(embed_dim, depths, num_heads, kv_stride),
            residual_pool=True,
            residual_with_cls_embed=False,
            rel_pos_embed=True,
            proj_after_attn=True,
            stochastic_depth_prob=stochastic_depth_prob,
        )
        super().__init__(out_features=embed_dim * 2 ** (len(depths) - 1))
        net.conv_proj = adapt_first_conv_to_single_channel(net.conv_proj)
        net.head = nn.Identity()
        self.net = net
        self.input_shape = input_shape
        self.padded_shape = padded_shape

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        require_volume_shape("mvit_v2_s", volumes, self.input_shape)
        pad = [
            target - side for side, target in zip(volumes.shape[2:], self.padded_shape, strict=True)
        ]
        if any(pad):
            # F.pad lists the last axis first: (W before, W after, H before, H after, D ...).
            volumes = F.pad(volumes, (0, pad[2], 0, pad[1], 0, pad[0]))
        return self.net(volumes)

    def layer_stages(self) -> list[LayerStage]:
        net = self.net
        return [[net.conv_proj, net.pos_encoding], *([block] for block in net.blocks), [net.norm]]


@register_backbone("mvit_v2_s", external=[kinetics("mvit_v2_s")])
def build_mvit_v2_s(
    input_shape: Shape3D,
    *,
    embed_dim: PositiveInt = 96,
    depths: StageInts = (1, 2, 11, 2),
    num_heads: PositiveInt = 1,
    kv_stride: PositiveInt = 8,
    stochastic_depth_prob: DropPathRate = 0.2,
) -> Backbone:
    """MViT-v2-S by default; ``num_heads`` and ``kv_stride`` are those of the first stage."""
    _require_two_blocks("mvit_v2_s", depths)
    if embed_dim % num_heads:
        raise ValueError(
            f"backbone 'mvit_v2_s': embed_dim {embed_dim} is not divisible by num_heads {num_heads}"
        )
    # After the patch stride of 4 and a query pooling by 2 at each later stage, every stage
    # must keep at least one token along H and W.
    min_side = MVIT_PATCH_STRIDE[1] * 2 ** (len(depths) - 1)
    small = [side for side in input_shape[1:] if side < min_side]
    if small:
        raise ValueError(
            f"backbone 'mvit_v2_s': input_shape {tuple(input_shape)} is too small: the patch "
            f"stride 4 and {len(depths) - 1} query poolings by 2 need H and W of at least "
            f"{min_side} voxels (got {small}); use larger volumes or fewer stages in `depths`"
        )
    return MViTBackbone(
        input_shape, embed_dim, tuple(depths), num_heads, kv_stride, stochastic_depth_prob
    )
