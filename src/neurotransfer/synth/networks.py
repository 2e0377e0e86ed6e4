"""MONAI's AutoencoderKL and DiffusionModelUNet, built from settings and conditioned as in the
brain LDM bundle (Pinaya et al.): the four scaled covariates enter the UNet twice, as extra
constant input channels (concatenation) and as the one-token context of its cross-attention."""

from __future__ import annotations

import torch
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from monai.utils import optional_import
from torch import nn

from neurotransfer.config import AutoencoderNetSettings, DiffusionNetSettings
from neurotransfer.synth.covariates import COVARIATES

N_COVARIATES = len(COVARIATES)
#: Covariate value meaning "no conditioning" for classifier-free guidance: outside [0, 1], so it
#: cannot be mistaken for a real covariate (MONAI's inferers fill with it when ``cfg`` is set).
UNCONDITIONAL_VALUE = -1.0


def require_einops() -> None:
    """MONAI's diffusion UNet builds its attention blocks with einops; fail early, clearly."""
    _, has_einops = optional_import("einops")
    if not has_einops:
        raise ImportError(
            "the synthesize stage needs the einops package (MONAI's DiffusionModelUNet attention "
            "layers use it); install it with `pip install einops`"
        )


def build_autoencoder(net: AutoencoderNetSettings) -> AutoencoderKL:
    if net.with_nonlocal_attn or any(net.attention_levels):
        require_einops()
    return AutoencoderKL(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=tuple(net.channels),
        attention_levels=tuple(net.attention_levels),
        num_res_blocks=net.num_res_blocks,
        latent_channels=net.latent_channels,
        norm_num_groups=net.norm_num_groups,
        norm_eps=1e-6,
        with_encoder_nonlocal_attn=net.with_nonlocal_attn,
        with_decoder_nonlocal_attn=net.with_nonlocal_attn,
    )


def build_unet(net: DiffusionNetSettings, latent_channels: int) -> DiffusionModelUNet:
    """The UNet sees the latent plus one constant channel per covariate and predicts noise."""
    require_einops()
    return DiffusionModelUNet(
        spatial_dims=3,
        in_channels=latent_channels + N_COVARIATES,
        out_channels=latent_channels,
        channels=tuple(net.channels),
        attention_levels=tuple(net.attention_levels),
        num_head_channels=tuple(net.num_head_channels),
        num_res_blocks=net.num_res_blocks,
        norm_num_groups=net.norm_num_groups,
        norm_eps=1e-6,
        resblock_updown=net.resblock_updown,
        with_conditioning=True,
        transformer_num_layers=net.transformer_num_layers,
        cross_attention_dim=N_COVARIATES,
        upcast_attention=net.upcast_attention,
    )


class CovariateConditionedUNet(nn.Module):
    """Adapts the bundle's double conditioning to MONAI's inferers' ``crossattn`` call.

    MONAI's inferers call ``model(x, timesteps=..., context=...)``; this wrapper broadcasts
    ``context`` (``[B, 1, 4]``) to four constant channels, concatenates them to ``x`` and passes
    ``context`` on to the cross-attention, exactly as the bundle's sampler does.
    """

    def __init__(self, unet: DiffusionModelUNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        if context is None or context.ndim != 3 or context.shape[1:] != (1, N_COVARIATES):
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"context must have shape [B, 1, {N_COVARIATES}], got {got}")
        channels = context[:, 0, :].reshape(*context.shape[:1], N_COVARIATES, 1, 1, 1)
        channels = channels.expand(-1, -1, *x.shape[2:]).to(x.dtype)
        return self.unet(torch.cat([x, channels], dim=1), timesteps=timesteps, context=context)


def latent_shape(
    image_shape: tuple[int, ...],
    autoencoder: AutoencoderNetSettings,
    diffusion: DiffusionNetSettings,
    key: str = "data.preprocess.shape",
) -> tuple[int, int, int]:
    """Latent grid of an image; the image must divide down through both networks' levels."""
    factor = autoencoder.downsample_factor * diffusion.downsample_factor
    if len(image_shape) != 3 or any(s % factor for s in image_shape):
        raise ValueError(
            f"{key} {tuple(image_shape)} must be divisible by {factor} (the autoencoder "
            f"downsamples by {autoencoder.downsample_factor}, the diffusion UNet by "
            f"{diffusion.downsample_factor} more): change the shape or the number of levels"
        )
    a, b, c = (s // autoencoder.downsample_factor for s in image_shape)
    return (a, b, c)
