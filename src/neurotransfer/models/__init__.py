"""Backbones, task heads and backbone weights I/O.

``build_backbone(name, input_shape, **options)`` returns an ``nn.Module`` mapping a batch of
volumes ``[B, 1, D, H, W]`` to features ``[B, out_features]``; ``TaskHead`` maps features to one
output per sample. The package knows nothing of files of data sets or of settings classes:
callers pass plain arguments, e.g.
``build_backbone(settings.model.name, shape, **settings.model.options)``.

Backbones (``available_backbones()``): ``sfcn`` and ``densenet121`` (:mod:`.cnn3d`),
``vit3d`` (:mod:`.vit3d`), ``slice2d`` (:mod:`.slice2d`), ``r3d_18``, ``r2plus1d_18``,
``swin3d_t`` and ``mvit_v2_s`` (:mod:`.video`). Adding one means a builder decorated with
``@register_backbone`` in a family module (imported below) and a ``conf/model/<name>.yaml``.
"""

# The family modules register their builders on import.
from neurotransfer.models import cnn3d, slice2d, video, vit3d  # noqa: F401
from neurotransfer.models.adaptation import adapt_first_conv_to_single_channel
from neurotransfer.models.base import Backbone, BackboneSpec, backbone_layer_groups
from neurotransfer.models.heads import TaskHead
from neurotransfer.models.registry import (
    available_backbones,
    backbone_options,
    build_backbone,
    register_backbone,
)
from neurotransfer.models.weights import load_backbone, load_backbone_weights, save_backbone

__all__ = [
    "Backbone",
    "BackboneSpec",
    "TaskHead",
    "adapt_first_conv_to_single_channel",
    "available_backbones",
    "backbone_layer_groups",
    "backbone_options",
    "build_backbone",
    "load_backbone",
    "load_backbone_weights",
    "register_backbone",
    "save_backbone",
]
