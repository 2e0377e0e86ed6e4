"""Batched DDIM sampling with MONAI's ``LatentDiffusionInferer``, and grid resampling.

Every sample's starting noise is drawn from one CPU generator seeded by ``seed`` before batching
and DDIM runs with ``eta = 0`` (deterministic), so sample *i* depends on the seed and its
covariates only, not on the batch size or the device's random number generator. On a GPU the
UNet and decoder run under bf16 (or fp16) autocast when the precision setting asks for it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.inferers import LatentDiffusionInferer
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from monai.transforms import ResizeWithPadOrCrop
from monai.utils import convert_to_tensor
from torch import nn

from neurotransfer.config import NoiseScheduleSettings
from neurotransfer.synth.networks import (
    N_COVARIATES,
    UNCONDITIONAL_VALUE,
    CovariateConditionedUNet,
)

log = logging.getLogger(__name__)


def ddpm_scheduler(schedule: NoiseScheduleSettings) -> DDPMScheduler:
    """The training-time noise schedule."""
    return DDPMScheduler(
        num_train_timesteps=schedule.num_train_timesteps,
        schedule=schedule.schedule,
        beta_start=schedule.beta_start,
        beta_end=schedule.beta_end,
    )


def ddim_scheduler(schedule: NoiseScheduleSettings, steps: int) -> DDIMScheduler:
    """The same schedule, sampled in ``steps`` DDIM steps (``clip_sample`` off as the bundle)."""
    if steps > schedule.num_train_timesteps:
        raise ValueError(
            f"ddim_steps {steps} exceeds the {schedule.num_train_timesteps} training timesteps"
        )
    scheduler = DDIMScheduler(
        num_train_timesteps=schedule.num_train_timesteps,
        schedule=schedule.schedule,
        beta_start=schedule.beta_start,
        beta_end=schedule.beta_end,
        clip_sample=False,
    )
    scheduler.set_timesteps(num_inference_steps=steps)
    return scheduler


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA for the mixed precisions ('auto': bf16 where supported)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    if precision == "auto":
        precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "32"
    if precision == "bf16-mixed":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class SamplingTiming:
    seconds: float
    volumes: int

    @property
    def seconds_per_volume(self) -> float:
        return self.seconds / max(self.volumes, 1)


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.no_grad()
def sample_volumes(
    autoencoder: nn.Module,
    unet: nn.Module,
    conditioning: torch.Tensor,
    *,
    latent_shape: tuple[int, int, int],
    latent_channels: int,
    scale_factor: float,
    schedule: NoiseScheduleSettings,
    ddim_steps: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    precision: str = "auto",
    guidance_scale: float | None = None,
) -> tuple[torch.Tensor, SamplingTiming]:
    """Sample one volume per row of ``conditioning`` (``[N, 4]``, scaled to [0, 1]).

    ``guidance_scale`` turns on classifier-free guidance (MONAI's ``cfg``): each step runs the
    UNet with and without the covariates and moves ``guidance_scale`` times along the
    difference; only meaningful for a model trained with condition dropout.

    Returns ``[N, 1, *image_shape]`` float32 volumes on the CPU, clipped to [0, 1], and the wall
    time of the whole loop (noise to decoded volumes, first-batch warm-up included).
    """
    if conditioning.ndim != 2 or conditioning.shape[1] != N_COVARIATES:
        raise ValueError(
            f"conditioning must be [N, {N_COVARIATES}], got {tuple(conditioning.shape)}"
        )
    n = conditioning.shape[0]
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, latent_channels, *latent_shape), generator=generator)
    inferer = LatentDiffusionInferer(
        ddim_scheduler(schedule, ddim_steps), scale_factor=scale_factor
    )
    model = CovariateConditionedUNet(unet).to(device).eval()
    autoencoder = autoencoder.to(device).eval()
    outputs = []
    start = time.perf_counter()
    for batch in _batches(n, batch_size):
        context = conditioning[batch].to(device=device, dtype=torch.float32).unsqueeze(1)
        with autocast(device, precision):
            images = inferer.sample(
                input_noise=noise[batch].to(device),
                autoencoder_model=autoencoder,
                diffusion_model=model,
                conditioning=context,
                mode="crossattn",
                verbose=False,
                cfg=guidance_scale,
                cfg_fill_value=UNCONDITIONAL_VALUE,
            )
        outputs.append(images.float().clamp_(0.0, 1.0).cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timing = SamplingTiming(time.perf_counter() - start, n)
    log.info(
        "sampled %d volumes in %.1f s (%.3f s/volume, %d DDIM steps, batch %d)",
        n,
        timing.seconds,
        timing.seconds_per_volume,
        ddim_steps,
        batch_size,
    )
    return torch.cat(outputs), timing


def resample_to_grid(
    volumes: torch.Tensor,
    source_spacing: tuple[float, float, float],
    target_spacing: tuple[float, float, float],
    target_shape: tuple[int, int, int],
) -> torch.Tensor:
    """Resample centred ``[N, 1, D, H, W]`` volumes to another voxel size and field of view.

    Both grids are taken to share their centre (both are brain-centred MNI-like grids). Voxel
    size changes by area averaging when coarsening (no aliasing) and trilinear interpolation when
    refining; the field of view then changes by symmetric cropping or zero padding.
    """
    if tuple(source_spacing) == tuple(target_spacing) and volumes.shape[2:] == target_shape:
        return volumes
    size = [
        max(1, round(n * s / t))
        for n, s, t in zip(volumes.shape[2:], source_spacing, target_spacing, strict=True)
    ]
    coarsening = all(t >= s for s, t in zip(source_spacing, target_spacing, strict=True))
    if coarsening:
        resized = F.interpolate(volumes.float(), size=size, mode="area")
    else:
        resized = F.interpolate(volumes.float(), size=size, mode="trilinear", align_corners=False)
    crop_or_pad = ResizeWithPadOrCrop(spatial_size=target_shape, mode="constant")
    return torch.stack([convert_to_tensor(crop_or_pad(v), track_meta=False) for v in resized])
