"""3D Vision Transformer (MONAI ``ViT``) with configurable patch size and depth.

External weights: ``imagenet`` initialises it from torchvision's ``vit_b_16``
(:func:`map_vit_b_16`), which needs ViT-B's sizes (:data:`VIT_B_16`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from monai.networks.nets import ViT
from monai.utils import optional_import
from torch import nn

from neurotransfer.backbone_rules import VIT_B_16, vit_b_16_problem, vit_size_problem
from neurotransfer.errors import SettingsError
from neurotransfer.models.base import Backbone, LayerStage, Shape3D, require_volume_shape
from neurotransfer.models.external_weights import (
    Counterpart,
    Mapped,
    State,
    assemble,
    inflate_conv,
    resize_kernel,
    sum_rgb,
    without_heads,
)
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


def map_vit_b_16(
    source: Mapping[str, torch.Tensor],
    backbone: nn.Module,
    source_heads: int = VIT_B_16["num_heads"],
) -> Mapped:
    """MONAI 3D ViT (``vit3d``) from torchvision's ``vit_b_16``.

    The patch embedding is inflated like a convolution (``[768, 3, 16, 16]`` ->
    ``[768, 1, p_d, p_h, p_w]``: summed over RGB, resized bilinearly with the sum of the kernel
    preserved when ``(p_h, p_w)`` is not 16x16, and I3D-inflated along depth); the 14x14 grid of
    position embeddings is interpolated bicubically to the volume's ``(H, W)`` token grid and
    repeated along ``D`` (depth order is left to fine-tuning); transformer blocks are copied.
    MONAI's ViT adds no position embedding to the class token, so torchvision's class-token
    position embedding is folded into the class token. Without ``qkv_bias`` the value bias is
    folded exactly into the output projection's bias (attention rows sum to one), the key bias
    does not change the softmax, and the query bias is dropped, which is the one inexact step
    (besides MONAI's LayerNorm epsilon, 1e-5 against 1e-6). ``source_heads``: the source ViT's
    number of heads, which its state dict does not record.
    """
    spec = getattr(backbone, "spec", None)
    options = spec.options if spec is not None else {}
    target = backbone.state_dict()
    sizes = {
        "hidden_size": target["vit.norm.weight"].shape[0],
        "mlp_dim": target["vit.blocks.0.mlp.linear1.weight"].shape[0],
        "num_heads": options.get("num_heads", source_heads),
        "num_layers": len({k.split(".")[2] for k in target if k.startswith("vit.blocks.")}),
    }
    source_sizes = {
        "hidden_size": source["conv_proj.weight"].shape[0],
        "mlp_dim": source["encoder.layers.encoder_layer_0.mlp.0.weight"].shape[0],
        "num_heads": source_heads,
        "num_layers": len({k.split(".")[2] for k in source if k.startswith("encoder.layers.")}),
    }
    problem = vit_size_problem(sizes, source_sizes)
    if problem:
        raise SettingsError(problem)
    hidden, layers = sizes["hidden_size"], sizes["num_layers"]

    mapped: State = {}
    used: set[str] = set()
    patch_key = "vit.patch_embedding.patch_embeddings.weight"
    p_d, p_h, p_w = target[patch_key].shape[2:]
    kernel = resize_kernel(sum_rgb(source["conv_proj.weight"]), (p_h, p_w))
    mapped[patch_key] = inflate_conv(kernel, p_d)
    mapped["vit.patch_embedding.patch_embeddings.bias"] = source["conv_proj.bias"]
    used |= {"conv_proj.weight", "conv_proj.bias"}

    pos = source["encoder.pos_embedding"]  # [1, 1 + g*g, hidden]
    cls_pos, grid_pos = pos[:, :1], pos[:, 1:]
    n_tokens = target["vit.patch_embedding.position_embeddings"].shape[1]
    shape = spec.input_shape if spec is not None else None
    if shape is None:
        raise ValueError("vit3d backbone without a build record (use build_backbone)")
    tokens = (shape[0] // p_d, shape[1] // p_h, shape[2] // p_w)
    if tokens[0] * tokens[1] * tokens[2] != n_tokens:
        raise ValueError(f"vit3d token grid {tokens} does not give {n_tokens} tokens")
    mapped["vit.patch_embedding.position_embeddings"] = _position_grid(grid_pos, tokens)
    if "vit.cls_token" in target:
        mapped["vit.cls_token"] = source["class_token"] + cls_pos
    used |= {"encoder.pos_embedding", "class_token"}

    for i in range(layers):
        used |= _map_vit_block(source, target, mapped, i, hidden)
    mapped["vit.norm.weight"] = source["encoder.ln.weight"]
    mapped["vit.norm.bias"] = source["encoder.ln.bias"]
    used |= {"encoder.ln.weight", "encoder.ln.bias"}
    unused = [k for k in without_heads(source) if k not in used]
    return assemble(target, mapped, unused, "vit3d", "ImageNet vit_b_16")


def _position_grid(grid_pos: torch.Tensor, tokens: tuple[int, int, int]) -> torch.Tensor:
    """The source's square grid of position embeddings ``[1, g*g, hidden]``, interpolated
    bicubically to the volume's ``(H, W)`` token grid and repeated along ``D``."""
    g_d, g_h, g_w = tokens
    side = round(grid_pos.shape[1] ** 0.5)
    grid = grid_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if (g_h, g_w) != (side, side):
        grid = F.interpolate(grid.float(), size=(g_h, g_w), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, 1, g_h * g_w, -1).repeat(1, g_d, 1, 1)
    return grid.reshape(1, g_d * g_h * g_w, -1)


def _map_vit_block(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    mapped: State,
    index: int,
    hidden: int,
) -> set[str]:
    """Transformer block ``index`` into ``mapped``; returns the source keys it used."""
    src = f"encoder.layers.encoder_layer_{index}."
    dst = f"vit.blocks.{index}."
    used: set[str] = set()
    pairs = {
        "ln_1": "norm1",
        "ln_2": "norm2",
        "mlp.0": "mlp.linear1",
        "mlp.3": "mlp.linear2",
        "self_attention.out_proj": "attn.out_proj",
    }
    for old, new in pairs.items():
        for leaf in ("weight", "bias"):
            mapped[f"{dst}{new}.{leaf}"] = source[f"{src}{old}.{leaf}"]
            used.add(f"{src}{old}.{leaf}")
    in_weight = source[f"{src}self_attention.in_proj_weight"]
    in_bias = source[f"{src}self_attention.in_proj_bias"]
    mapped[f"{dst}attn.qkv.weight"] = in_weight
    if f"{dst}attn.qkv.bias" in target:
        mapped[f"{dst}attn.qkv.bias"] = in_bias
    else:
        # No qkv bias in the model: fold the value bias into the output projection
        # (softmax rows sum to one); the key bias is softmax-invariant; the query bias is lost.
        v_bias = in_bias[2 * hidden :]
        out_w = source[f"{src}self_attention.out_proj.weight"]
        out_b = source[f"{src}self_attention.out_proj.bias"]
        mapped[f"{dst}attn.out_proj.bias"] = out_b + out_w @ v_bias
    used |= {f"{src}self_attention.in_proj_weight", f"{src}self_attention.in_proj_bias"}
    return used


IMAGENET_VIT_B_16 = Counterpart(
    "imagenet",
    "vit_b_16",
    "IMAGENET1K_V1",
    map_vit_b_16,
    vit_b_16_problem,
)


@register_backbone("vit3d", external=[IMAGENET_VIT_B_16])
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
