"""3D Vision Transformer (MONAI ``ViT``) with configurable patch size and depth."""

from __future__ import annotations

from typing import Literal

import torch
from monai.networks.nets import ViT
from monai.utils import optional_import
from torch import nn

from neurotransfer.models.base import Backbone, LayerStage, Shape3D, require_volume_shape
from neurotransfer.models.registry import DropoutRate, PositiveInt, register_backbone

_, has_einops = optional_import("einops")


class ViT3D(Backbone):
    """MONAI's 3D ViT: non-overlapping cubic (or cuboid) patches, learned absolute position
    embeddings, pre-norm transformer blocks. The feature is the final-norm output of the class
    token (``pooling="cls"``, as in ViT) or the mean over patch tokens (``"mean"``)."""

    def __init__(
        self,
        input_shape: Shape3D,
        patch_size: tuple[int, int, int],
        hidden_size: int,
        mlp_dim: int,
        num_layers: int,
        num_heads: int,
        dropout: float,
        pooling: Literal["cls", "mean"],
        qkv_bias: bool = False,
    ) -> None:
        super().__init__(out_features=hidden_size)
        self.input_shape = input_shape
        self.pooling = pooling
        self.vit = ViT(
            in_channels=1,
            img_size=input_shape,
            patch_size=patch_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            proj_type="conv",
            pos_embed_type="learnable",
            classification=pooling == "cls",  # adds the class token
            dropout_rate=dropout,
            spatial_dims=3,
            qkv_bias=qkv_bias,
        )
        if pooling == "cls":
            # MONAI's forward then returns the normalised class token itself.
            self.vit.classification_head = nn.Identity()
        for block in self.vit.blocks:
            # MONAI creates this LayerNorm even without cross-attention and never uses it; dead
            # parameters would get no gradient (and break DistributedDataParallel). A MONAI ViT
            # checkpoint's `norm_cross_attn` keys carry nothing and can be dropped on loading.
            block.norm_cross_attn = nn.Identity()

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        require_volume_shape("vit3d", volumes, self.input_shape)
        tokens, _ = self.vit(volumes)
        return tokens if self.pooling == "cls" else tokens.mean(dim=1)

    def layer_stages(self) -> list[LayerStage]:
        stem: list[nn.Module | nn.Parameter] = [self.vit.patch_embedding]
        if self.pooling == "cls":
            stem.append(self.vit.cls_token)
        return [stem, *([block] for block in self.vit.blocks), [self.vit.norm]]


@register_backbone("vit3d")
def build_vit3d(
    input_shape: Shape3D,
    *,
    patch_size: PositiveInt | tuple[PositiveInt, PositiveInt, PositiveInt] = 16,
    hidden_size: PositiveInt = 768,
    mlp_dim: PositiveInt = 3072,
    num_layers: PositiveInt = 12,
    num_heads: PositiveInt = 12,
    dropout: DropoutRate = 0.0,
    pooling: Literal["cls", "mean"] = "cls",
    qkv_bias: bool = False,
) -> ViT3D:
    """ViT-Base by default (768 wide, 12 layers, 12 heads, 16^3 patches).

    ``qkv_bias``: biases on the query/key/value projection, as torchvision's ViT-B has; with it,
    ImageNet ``vit_b_16`` weights map onto the model without dropping the query bias.
    """
    patch = (patch_size,) * 3 if isinstance(patch_size, int) else tuple(patch_size)
    bad_axes = [axis for axis in range(3) if input_shape[axis] % patch[axis]]
    if bad_axes:
        common = [p for p in range(1, min(input_shape) + 1) if all(s % p == 0 for s in input_shape)]
        per_axis = "; ".join(
            f"axis {axis} ({input_shape[axis]}): "
            f"{[p for p in range(1, input_shape[axis] + 1) if input_shape[axis] % p == 0]}"
            for axis in bad_axes
        )
        raise ValueError(
            f"backbone 'vit3d': patch_size {patch} does not divide input_shape {input_shape} "
            f"along axes {bad_axes}; a single patch_size dividing every side is one of "
            f"{common}, or give one per axis (sizes that divide: {per_axis})"
        )
    if hidden_size % num_heads:
        raise ValueError(
            f"backbone 'vit3d': hidden_size {hidden_size} is not divisible by num_heads "
            f"{num_heads}; choose num_heads among "
            f"{[h for h in range(1, hidden_size + 1) if hidden_size % h == 0 and h <= 64]}"
        )
    if not has_einops:
        raise ImportError(
            "backbone 'vit3d' needs the einops package (MONAI's ViT attention uses it); "
            "install it with `pip install einops`"
        )
    return ViT3D(
        input_shape, patch, hidden_size, mlp_dim, num_layers, num_heads, dropout, pooling, qkv_bias
    )
