"""A backbone small enough to train for a few epochs in a test: one conv, global pooling.

No BatchNorm and no dropout, so its output depends only on its weights and input (the DDP test
relies on that).
"""

from __future__ import annotations

import torch
from torch import nn


class TinyBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.out_features = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x))).flatten(1)
