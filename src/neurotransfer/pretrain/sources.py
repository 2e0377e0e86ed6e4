"""Which initialisation source works with which architecture, and where its weights come from.

``scratch``, ``synthetic`` and ``ssl`` work with every backbone (they start from the
architecture's own initialisation). The external sources (``imagenet``: 2D ImageNet-1k
weights, ``kinetics``: Kinetics-400 video weights) need a torchvision counterpart, which each
backbone declares beside its builder in ``neurotransfer.models`` (a
:class:`~neurotransfer.models.Counterpart` per source, with the mapping of its state dict);
this module only reads that registry, so it names no architecture.

:func:`check_source` runs before any data or weights are read, so an impossible combination
stops the stage at start with the architectures that would work (the settings check the same
rule, :func:`neurotransfer.config.pretrain_source_problem`, when they load).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from neurotransfer.config import SettingsError, pretrain_source_problem
from neurotransfer.models import Counterpart, Mapped, backbone_counterparts


def check_source(source: str, architecture: str, options: Mapping[str, Any]) -> None:
    """Fail with a :class:`SettingsError` when ``source`` cannot initialise ``architecture``."""
    problem = pretrain_source_problem(source, architecture, options)
    if problem:
        raise SettingsError(problem)


def counterpart(source: str, architecture: str) -> Counterpart:
    """The torchvision model behind ``source`` for ``architecture`` (external sources only)."""
    check_source(source, architecture, {})
    return backbone_counterparts(architecture)[source]


def map_external(
    source: str, architecture: str, state: Mapping[str, torch.Tensor], backbone: nn.Module
) -> Mapped:
    """``state`` (the counterpart's torchvision state dict) mapped onto ``backbone``."""
    found = backbone_counterparts(architecture).get(source)
    if found is None:
        raise SettingsError(f"no {source} mapping for model {architecture!r}")
    return found.map_state(state, backbone)
