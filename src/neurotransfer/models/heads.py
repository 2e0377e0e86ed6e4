"""Task heads: one output per sample on top of a backbone's features."""

from __future__ import annotations

import torch
from torch import nn


class TaskHead(nn.Module):
    """Dropout then a linear map ``[B, in_features] -> [B]``: a logit for a binary task, a
    (standardised) value for a regression task."""

    def __init__(self, in_features: int, dropout: float = 0.0) -> None:
        super().__init__()
        if in_features <= 0:
            raise ValueError(f"TaskHead: in_features must be positive, got {in_features}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"TaskHead: dropout must be in [0, 1), got {dropout}")
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_features, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(features)).squeeze(-1)
