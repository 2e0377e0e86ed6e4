"""Adapting RGB first convolutions to one-channel volumes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neurotransfer.models import adapt_first_conv_to_single_channel


@pytest.mark.parametrize(
    ("conv", "grey_shape"),
    [
        (nn.Conv2d(3, 8, kernel_size=7, stride=2, padding=3), (2, 1, 32, 24)),
        (
            nn.Conv3d(3, 6, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3)),
            (2, 1, 8, 16, 12),
        ),
    ],
    ids=["conv2d", "conv3d"],
)
def test_adapted_conv_on_grey_equals_original_on_replicated_grey(
    conv: nn.Conv2d | nn.Conv3d, grey_shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    grey = torch.randn(*grey_shape)
    adapted = adapt_first_conv_to_single_channel(conv)
    assert type(adapted) is type(conv)
    assert adapted.in_channels == 1 and adapted.out_channels == conv.out_channels
    assert (adapted.stride, adapted.padding) == (conv.stride, conv.padding)
    replicated = grey.expand(-1, 3, *grey_shape[2:])
    with torch.no_grad():
        torch.testing.assert_close(adapted(grey), conv(replicated), rtol=1e-5, atol=1e-5)


def test_adapting_keeps_a_missing_bias_missing() -> None:
    adapted = adapt_first_conv_to_single_channel(nn.Conv2d(3, 4, 3, bias=False))
    assert adapted.bias is None


def test_grouped_or_non_conv_layers_are_refused() -> None:
    with pytest.raises(ValueError, match="grouped convolution"):
        adapt_first_conv_to_single_channel(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(TypeError, match="Linear"):
        adapt_first_conv_to_single_channel(nn.Linear(3, 4))
