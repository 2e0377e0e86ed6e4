"""Adapting networks made for RGB images or videos to one-channel MRI volumes."""

from __future__ import annotations

import torch
from torch import nn

ConvNd = nn.Conv1d | nn.Conv2d | nn.Conv3d


def adapt_first_conv_to_single_channel(conv: ConvNd) -> ConvNd:
    """A copy of ``conv`` that takes one input channel, its weights summed over the inputs.

    A grey image fed to an RGB network is usually replicated to three channels; since the
    convolution is linear, ``sum_c W_c * x`` equals convolving ``x`` once with ``sum_c W_c``.
    Summing the pre-trained RGB kernels therefore gives exactly the response the network had to
    a replicated grey input, at a third of the cost. For randomly initialised (Kaiming) kernels
    the sum over ``C`` channels has the variance Kaiming prescribes for a single input channel,
    so the adapted layer is a valid fresh initialisation too.

    Stride, padding, dilation, padding mode, bias, dtype and device are kept.
    """
    if not isinstance(conv, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        raise TypeError(f"expected a Conv1d/2d/3d layer, got {type(conv).__name__}")
    if conv.groups != 1:
        raise ValueError(
            f"cannot adapt a grouped convolution (groups={conv.groups}) to one input channel"
        )
    adapted = type(conv)(
        in_channels=1,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=1,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        adapted.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            adapted.bias.copy_(conv.bias)
    return adapted
