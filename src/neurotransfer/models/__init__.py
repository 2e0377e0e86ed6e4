"""Backbones, task heads and backbone weights I/O.

``build_backbone(name, input_shape, **options)`` returns an ``nn.Module`` mapping a batch of
volumes ``[B, 1, D, H, W]`` to features ``[B, out_features]``; ``TaskHead`` maps features to one
output per sample. The package knows nothing of files of data sets or of settings classes:
callers pass plain arguments, e.g.
``build_backbone(settings.model.name, shape, **settings.model.options)``.

Backbones (``available_backbones()``): ``sfcn`` and ``densenet121`` (:mod:`.cnn3d`),
``vit3d`` (:mod:`.vit3d`), ``slice2d`` (:mod:`.slice2d`), ``r3d_18``, ``r2plus1d_18``,
``swin3d_t`` and ``mvit_v2_s`` (:mod:`.video`).

Adding an architecture: one module in this package with a builder decorated with
``@register_backbone(name, external=[...])`` (the ``external`` :class:`Counterpart` list names
the torchvision weights it can start from and how they map onto it, see
:mod:`.external_weights`; leave it out when there are none), and a ``conf/model/<name>.yaml``.
Every module of the package is imported below, so the new one registers itself.
"""

import importlib
import pkgutil

from neurotransfer.models.adaptation import adapt_first_conv_to_single_channel
from neurotransfer.models.base import Backbone, BackboneSpec, backbone_layer_groups
from neurotransfer.models.external_weights import Counterpart, Mapped
from neurotransfer.models.heads import TaskHead
from neurotransfer.models.registry import (
    available_backbones,
    backbone_counterparts,
    backbone_options,
    backbones_with_counterpart,
    build_backbone,
    register_backbone,
)
from neurotransfer.models.weights import load_backbone, load_backbone_weights, save_backbone

# The family modules register their builders (and external weights) on import.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module

__all__ = [
    "Backbone",
    "BackboneSpec",
    "Counterpart",
    "Mapped",
    "TaskHead",
    "adapt_first_conv_to_single_channel",
    "available_backbones",
    "backbone_counterparts",
    "backbone_layer_groups",
    "backbone_options",
    "backbones_with_counterpart",
    "build_backbone",
    "load_backbone",
    "load_backbone_weights",
    "register_backbone",
    "save_backbone",
]
