"""External (torchvision) weights a backbone can start from, declared beside its builder.

torchvision keeps ``R3D_18_Weights`` next to its ``r3d_18`` builder; here a family module passes
one :class:`Counterpart` per external source to ``@register_backbone(name, external=...)``: the
pretrain source that selects it (``imagenet``, ``kinetics``), the torchvision model and default
weights enum member, the function that maps that model's state dict onto the backbone and,
where the backbone's options decide whether the weights fit, a check of those options. The
``pretrain`` stage only reads the registry (:func:`.registry.backbone_counterparts`), so adding
an architecture with external weights touches its own model file and its ``conf/model/`` entry.

The mappings are built from generic operations, each chosen so that the initialised network
reproduces the response of the pre-trained one where that is mathematically possible:

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
- **Kernel resizing** (:func:`resize_kernel`): bilinear, keeping each kernel's sum (its
  response to a constant patch), for patch embeddings of another size.

:func:`inflate_2d_state` applies the first two to a whole 2D network (keys renamed by the
family). A mapping takes the source state dict and the target backbone and returns the
initialised backbone's full state dict through :func:`assemble`, which checks that every target
key is covered (except the parts a family initialises itself, e.g. slice2d's projection and
slice position embedding) with the right shape and reports source keys left unused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neurotransfer.errors import SettingsError

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


# torchvision state dict and the backbone to initialise -> the backbone's initialised state.
MapState = Callable[[Mapping[str, torch.Tensor], nn.Module], Mapped]
# The backbone's options, defaults filled in -> why these weights cannot fit ('' when they can).
OptionsProblem = Callable[[Mapping[str, Any]], str]


@dataclass(frozen=True)
class Counterpart:
    """The torchvision model whose weights initialise a backbone for one pretrain source."""

    source: str  # the pretrain source that selects these weights: imagenet, kinetics
    model: str  # torchvision model name, for torchvision.models.get_model_weights
    default_weights: str  # member of its weights enum used when pretrain.weights is null
    map_state: MapState
    # Checked when the settings load, before any weights are read; None: every option fits.
    options_problem: OptionsProblem | None = None


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


def without_heads(state: Mapping[str, torch.Tensor]) -> State:
    """The state dict without the torchvision classifier's keys."""
    return {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}


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


def inflate_2d_state(
    source: Mapping[str, torch.Tensor],
    backbone: nn.Module,
    rename: Callable[[str], str | None],
    rgb_key: str,
    architecture: str,
    origin: str,
) -> Mapped:
    """A 2D network's state dict on a 3D backbone by I3D inflation.

    Each source key (classifier heads left out) becomes ``rename(key)`` in the backbone (None:
    reported unused); the first convolution's weight, ``rgb_key``, is summed over RGB, and every
    2D kernel is inflated to the depth of the 3D kernel it lands on.
    """
    target = backbone.state_dict()
    mapped: State = {}
    unused: list[str] = []
    for key, value in without_heads(source).items():
        new = rename(key)
        if new is None:
            unused.append(key)
            continue
        if key == rgb_key:
            value = sum_rgb(value)
        if value.ndim == 4 and new in target:
            value = inflate_conv(value, target[new].shape[2])
        mapped[new] = value
    return assemble(target, mapped, unused, architecture, origin)
