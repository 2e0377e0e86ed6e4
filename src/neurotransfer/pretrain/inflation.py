"""Mapping torchvision 2D and video state dicts onto the neurotransfer backbones.

Three operations, each chosen so that the initialised network reproduces the response of the
pre-trained one where that is mathematically possible:

- **RGB to one channel** (:func:`sum_rgb`): a first-layer kernel ``[O, 3, ...]`` becomes
  ``[O, 1, ...]`` by summing over the colour channels. By linearity, convolving a grey image
  once with the summed kernel equals convolving the grey image replicated to RGB with the
  original kernel, i.e. the network responds to an MRI slice as it would to that slice shown
  as a grey photograph. (ImageNet's per-channel input normalisation is not applied; MRI
  intensities are in about [0, 1].)
- **I3D inflation** (:func:`inflate_conv`, Carreira & Zisserman 2017): a 2D kernel ``k x k``
  becomes ``d x k x k`` by repeating it ``d`` times along the volume's first axis and dividing
  by ``d``; on a volume that is constant along that axis the 3D convolution gives exactly the
  2D convolution of one slice (away from the zero padding at the two ends of the axis).
- **ViT patch and position embeddings** (:func:`map_vit_b_16`): the patch embedding is
  inflated the same way (``[768, 3, 16, 16]`` -> ``[768, 1, p_d, p_h, p_w]``; resized
  bilinearly, with the sum of the kernel preserved, when ``(p_h, p_w)`` is not 16x16); the
  14x14 grid of position embeddings is interpolated bicubically to the volume's ``(H, W)``
  token grid and repeated along ``D`` (depth order is left to fine-tuning); transformer blocks
  are copied. MONAI's ViT adds no position embedding to the class token, so torchvision's
  class-token position embedding is folded into the class token. MONAI's ViT has no qkv
  bias: the value bias is folded exactly into the output projection's bias (attention rows
  sum to one), the key bias does not change the softmax, and the query bias is dropped, which
  is the one inexact step (besides MONAI's LayerNorm epsilon, 1e-5 against 1e-6).

The mapping functions take the source state dict and the target backbone and return the
initialised backbone's full state dict; :func:`assemble` checks that every target key is
covered (except the parts a family initialises itself, e.g. slice2d's projection and slice
position embedding) with the right shape and reports source keys left unused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from neurotransfer.config import SettingsError

State = dict[str, torch.Tensor]

# Heads of the torchvision classifiers: never part of a backbone.
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "heads.")


@dataclass
class Mapped:
    """The initialised state dict plus what was and was not taken from the source."""

    state: State
    loaded: list[str] = field(default_factory=list)  # target keys set from the source
    own_init: list[str] = field(default_factory=list)  # target keys left at their own init
    unused: list[str] = field(default_factory=list)  # source keys not used (besides heads)

    def summary(self) -> dict[str, object]:
        return {
            "keys_loaded": len(self.loaded),
            "keys_own_init": len(self.own_init),
            "own_init_keys": self.own_init[:20],
            "unused_source_keys": self.unused[:20],
            "n_unused_source_keys": len(self.unused),
        }


def sum_rgb(weight: torch.Tensor) -> torch.Tensor:
    """``[O, 3, ...]`` -> ``[O, 1, ...]``: the response to a grey input replicated to RGB."""
    if weight.ndim < 3 or weight.shape[1] != 3:
        raise ValueError(f"expected an RGB kernel [O, 3, ...], got shape {list(weight.shape)}")
    return weight.sum(dim=1, keepdim=True)


def inflate_conv(weight: torch.Tensor, depth: int) -> torch.Tensor:
    """I3D: ``[O, I, kh, kw]`` -> ``[O, I, depth, kh, kw]``, repeated and divided by ``depth``."""
    if weight.ndim != 4:
        raise ValueError(f"expected a 2D kernel [O, I, kh, kw], got shape {list(weight.shape)}")
    return weight.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth


def resize_kernel(weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``[O, I, kh, kw]`` bilinearly to ``size``, keeping each kernel's sum (its response
    to a constant patch)."""
    if tuple(weight.shape[2:]) == tuple(size):
        return weight
    resized = F.interpolate(weight.float(), size=size, mode="bilinear", align_corners=False)
    scale = (weight.shape[2] * weight.shape[3]) / (size[0] * size[1])
    return (resized * scale).to(weight.dtype)


def assemble(
    target: Mapping[str, torch.Tensor],
    mapped: Mapping[str, torch.Tensor],
    unused: Iterable[str],
    architecture: str,
    origin: str,
    own_init: Callable[[str], bool] = lambda key: False,
) -> Mapped:
    """The target's full state dict with ``mapped`` entries in place, checked key by key."""
    missing = sorted(k for k in target if k not in mapped and not own_init(k))
    misshaped = sorted(
        f"{k} (source {list(mapped[k].shape)}, model {list(target[k].shape)})"
        for k in target
        if k in mapped and mapped[k].shape != target[k].shape
    )
    if missing or misshaped:
        problems = []
        if missing:
            problems.append(f"{len(missing)} model key(s) without a source: {missing[:8]}")
        if misshaped:
            problems.append(f"{len(misshaped)} shape mismatch(es): {misshaped[:8]}")
        raise SettingsError(
            f"{origin} weights do not fit model {architecture!r} with these options (the "
            f"pre-trained network has a fixed architecture; use the conf/model/{architecture}"
            ".yaml defaults): " + "; ".join(problems)
        )
    extra = sorted(set(unused) | {k for k in mapped if k not in target})
    state = {k: (mapped[k].to(v.dtype) if k in mapped else v.clone()) for k, v in target.items()}
    return Mapped(
        state=state,
        loaded=sorted(k for k in target if k in mapped),
        own_init=sorted(k for k in target if k not in mapped),
        unused=extra,
    )


def _without_heads(state: Mapping[str, torch.Tensor]) -> State:
    return {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}


# --------------------------------------------------------------------------------------------
# ImageNet (2D) sources
# --------------------------------------------------------------------------------------------
def map_resnet18_slice2d(source: Mapping[str, torch.Tensor], backbone: nn.Module) -> Mapped:
    """slice2d's ResNet18 slice encoder takes the 2D weights as they are (conv1 summed over RGB);
    the slice projection, position embedding and pooling keep their own initialisation."""
    mapped: State = {}
    for key, value in _without_heads(source).items():
        mapped[f"encoder.net.{key}"] = sum_rgb(value) if key == "conv1.weight" else value
    return assemble(
        backbone.state_dict(),
        mapped,
        [],
        "slice2d",
        "ImageNet resnet18",
        own_init=lambda k: not k.startswith("encoder."),
    )


_RESNET_BLOCK = re.compile(r"^(layer\d+\.\d+)\.(conv1|bn1|conv2|bn2|downsample\.[01])\.(.+)$")


def map_resnet18_r3d(source: Mapping[str, torch.Tensor], backbone: nn.Module) -> Mapped:
    """torchvision VideoResNet (``r3d_18``) from a 2D ResNet18 by I3D inflation.

    Stem: ``conv1`` (7x7) -> ``stem.0`` (3x7x7, summed over RGB), ``bn1`` -> ``stem.1``; each
    basic block's ``conv1/bn1/conv2/bn2`` -> ``conv1.0/conv1.1/conv2.0/conv2.1`` (3x3 ->
    3x3x3), ``downsample`` as is (1x1 -> 1x1x1). VideoResNet has no max-pool after its stem, so
    the 3D network sees twice the 2D network's resolution from ``layer1`` on.
    """
    target = backbone.state_dict()
    mapped: State = {}
    unused: list[str] = []
    for key, value in _without_heads(source).items():
        if key.startswith("conv1."):
            new = "net.stem.0." + key.removeprefix("conv1.")
            value = sum_rgb(value) if value.ndim == 4 else value
        elif key.startswith("bn1."):
            new = "net.stem.1." + key.removeprefix("bn1.")
        else:
            match = _RESNET_BLOCK.match(key)
            if match is None:
                unused.append(key)
                continue
            block, layer, rest = match.groups()
            layer = {
                "conv1": "conv1.0",
                "bn1": "conv1.1",
                "conv2": "conv2.0",
                "bn2": "conv2.1",
            }.get(layer, layer)
            new = f"net.{block}.{layer}.{rest}"
        if value.ndim == 4 and new in target:
            value = inflate_conv(value, target[new].shape[2])
        mapped[new] = value
    return assemble(target, mapped, unused, "r3d_18", "ImageNet resnet18")


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
    target = backbone.state_dict()
    mapped: State = {}
    for key, value in _without_heads(normalise_densenet_keys(source)).items():
        new = "net." + re.sub(r"(denselayer\d+)\.", r"\1.layers.", key)
        if key == "features.conv0.weight":
            value = sum_rgb(value)
        if value.ndim == 4 and new in target:
            value = inflate_conv(value, target[new].shape[2])
        mapped[new] = value
    return assemble(target, mapped, [], "densenet121", "ImageNet densenet121")


VIT_B_16_HEADS = 12


def map_vit_b_16(
    source: Mapping[str, torch.Tensor], backbone: nn.Module, source_heads: int = VIT_B_16_HEADS
) -> Mapped:
    """MONAI 3D ViT (``vit3d``) from torchvision's ``vit_b_16`` (see the module docstring)."""
    spec = getattr(backbone, "spec", None)
    options = spec.options if spec is not None else {}
    target = backbone.state_dict()
    src_hidden = source["conv_proj.weight"].shape[0]
    src_layers = len({k.split(".")[2] for k in source if k.startswith("encoder.layers.")})
    src_mlp = source["encoder.layers.encoder_layer_0.mlp.0.weight"].shape[0]
    hidden = target["vit.norm.weight"].shape[0]
    problems = []
    if hidden != src_hidden:
        problems.append(f"hidden_size {hidden} (vit_b_16: {src_hidden})")
    mlp = target["vit.blocks.0.mlp.linear1.weight"].shape[0]
    if mlp != src_mlp:
        problems.append(f"mlp_dim {mlp} (vit_b_16: {src_mlp})")
    layers = len({k.split(".")[2] for k in target if k.startswith("vit.blocks.")})
    if layers > src_layers:
        problems.append(f"num_layers {layers} (vit_b_16 has {src_layers}; fewer are fine)")
    heads = options.get("num_heads", source_heads)
    if heads != source_heads:
        problems.append(f"num_heads {heads} (vit_b_16: {source_heads})")
    if problems:
        raise SettingsError(
            "pretrain=imagenet initialises vit3d from torchvision's vit_b_16, whose sizes the "
            "model must share; model.options has " + ", ".join(problems) + ": set "
            f"hidden_size={src_hidden}, mlp_dim={src_mlp}, num_heads={source_heads}, "
            f"num_layers<={src_layers}"
        )

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
    side = round(grid_pos.shape[1] ** 0.5)
    n_tokens = target["vit.patch_embedding.position_embeddings"].shape[1]
    shape = spec.input_shape if spec is not None else None
    if shape is None:
        raise ValueError("vit3d backbone without a build record (use build_backbone)")
    g_d, g_h, g_w = shape[0] // p_d, shape[1] // p_h, shape[2] // p_w
    if g_d * g_h * g_w != n_tokens:
        raise ValueError(f"vit3d token grid {(g_d, g_h, g_w)} does not give {n_tokens} tokens")
    grid = grid_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if (g_h, g_w) != (side, side):
        grid = F.interpolate(grid.float(), size=(g_h, g_w), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, 1, g_h * g_w, -1).repeat(1, g_d, 1, 1)
    mapped["vit.patch_embedding.position_embeddings"] = grid.reshape(1, n_tokens, -1)
    if "vit.cls_token" in target:
        mapped["vit.cls_token"] = source["class_token"] + cls_pos
    used |= {"encoder.pos_embedding", "class_token"}

    for i in range(layers):
        src = f"encoder.layers.encoder_layer_{i}."
        dst = f"vit.blocks.{i}."
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
    mapped["vit.norm.weight"] = source["encoder.ln.weight"]
    mapped["vit.norm.bias"] = source["encoder.ln.bias"]
    used |= {"encoder.ln.weight", "encoder.ln.bias"}
    unused = [k for k in _without_heads(source) if k not in used]
    return assemble(target, mapped, unused, "vit3d", "ImageNet vit_b_16")


# --------------------------------------------------------------------------------------------
# Kinetics-400 (video) sources
# --------------------------------------------------------------------------------------------
_REL_POS = re.compile(r"\.rel_pos_[thw]$")


def map_video(source: Mapping[str, torch.Tensor], backbone: nn.Module, architecture: str) -> Mapped:
    """A torchvision video network into its neurotransfer wrapper (``net.`` prefix).

    The first convolution (``[O, 3, ...]``) is summed over RGB; MViT's relative-position tables,
    sized at construction for 16x224x224 clips, are linearly interpolated to the sizes this
    volume's token grid needs (as MViTv2 does for other input sizes).
    """
    target = backbone.state_dict()
    mapped: State = {}
    for key, value in _without_heads(source).items():
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


def map_external(
    source: str, architecture: str, state: Mapping[str, torch.Tensor], backbone: nn.Module
) -> Mapped:
    """Dispatch to the mapping for (``source``, ``architecture``)."""
    if source == "imagenet":
        if architecture == "slice2d":
            return map_resnet18_slice2d(state, backbone)
        if architecture == "r3d_18":
            return map_resnet18_r3d(state, backbone)
        if architecture == "densenet121":
            return map_densenet121(state, backbone)
        if architecture == "vit3d":
            return map_vit_b_16(state, backbone)
    elif source == "kinetics":
        return map_video(state, backbone, architecture)
    raise SettingsError(f"no {source} mapping for model {architecture!r}")
