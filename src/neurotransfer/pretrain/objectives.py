"""Pre-training objectives that act on any backbone's ``[B, F]`` features.

- **covariates**: a linear head regresses the synthetic volumes' conditioning covariates
  (standardised per column) from the features; mean squared error.
- **simclr** (Chen et al. 2020): two random 3D views of every volume (crop-resize, flips,
  intensity jitter and Gaussian noise, :class:`VolumeAugment`) go through the backbone and an
  MLP projection head; NT-Xent (:func:`nt_xent`) pulls the two views of a volume together and
  pushes the other ``2B - 2`` views of the batch away.
- **masked**: cubes of ``patch_size`` voxels (a ``mask_ratio`` fraction of the cube grid) are
  zeroed; the backbone encodes the masked volume and a light decoder (:class:`MaskedDecoder`:
  a linear layer to a coarse grid, trilinear up-sampling and two 3D convolutions) reconstructs
  the volume from the pooled feature vector; the loss is the mean squared error on the masked
  voxels only. This is a generic masked-cube reconstruction from the backbone's *pooled*
  output, so it works for every backbone (for ``vit3d`` the cubes are the model's patches);
  it is not SimMIM's per-token reconstruction, which would need the token map of each family.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Shape3D = tuple[int, int, int]


# --------------------------------------------------------------------------------------------
# covariate regression
# --------------------------------------------------------------------------------------------
class CovariateHead(nn.Module):
    """Linear regression of ``n`` standardised covariates from the features."""

    def __init__(self, in_features: int, n_covariates: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, n_covariates)

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.linear(features).float(), targets.float())


# --------------------------------------------------------------------------------------------
# SimCLR
# --------------------------------------------------------------------------------------------
class ProjectionHead(nn.Module):
    """SimCLR's MLP projection ``F -> hidden -> projection_dim`` (discarded after pre-training)."""

    def __init__(self, in_features: int, hidden_dim: int, projection_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, projection_dim),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised temperature-scaled cross entropy over ``2B`` views (``z1[i]`` pairs ``z2[i]``).

    Each view's positive is the other view of its volume; the other ``2B - 2`` views are its
    negatives. Cosine similarities are divided by ``temperature``.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"expected two [B, K] projections, got {list(z1.shape)} {list(z2.shape)}")
    batch = z1.shape[0]
    if batch < 2:
        raise ValueError("NT-Xent needs at least 2 volumes per batch (negatives)")
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * batch, dtype=torch.bool, device=z.device), -1e9)
    targets = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z.device)
    return F.cross_entropy(logits, targets)


class VolumeAugment(nn.Module):
    """SimCLR's random views of ``[B, 1, D, H, W]`` volumes, drawn independently per volume.

    1. crop-resize: a box whose sides are ``s`` times the volume's (``s`` uniform in
       ``crop_scale``, one ``s`` per volume), at a random position, resized back trilinearly;
    2. a flip along each axis with probability 0.5;
    3. intensity: scale by ``1 + U(-0.1, 0.1)``, shift by ``U(-0.1, 0.1)``, add Gaussian noise
       of sd ``noise_std``.
    """

    def __init__(self, crop_scale: tuple[float, float], noise_std: float) -> None:
        super().__init__()
        low, high = crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
        self.crop_scale = (float(low), float(high))
        self.noise_std = float(noise_std)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._one(v) for v in volumes])

    def _one(self, volume: torch.Tensor) -> torch.Tensor:
        shape = volume.shape[1:]
        low, high = self.crop_scale
        scale = low + (high - low) * float(torch.rand(()))
        starts, sizes = [], []
        for side in shape:
            size = max(1, round(scale * side))
            starts.append(int(torch.randint(0, side - size + 1, ())))
            sizes.append(size)
        view = volume[
            :,
            starts[0] : starts[0] + sizes[0],
            starts[1] : starts[1] + sizes[1],
            starts[2] : starts[2] + sizes[2],
        ]
        if tuple(sizes) != tuple(shape):
            view = F.interpolate(
                view[None].float(), size=tuple(shape), mode="trilinear", align_corners=False
            )[0].to(volume.dtype)
        flips = [axis + 1 for axis in range(3) if float(torch.rand(())) < 0.5]
        if flips:
            view = torch.flip(view, dims=flips)
        gain = 1.0 + 0.2 * (float(torch.rand(())) - 0.5)
        shift = 0.2 * (float(torch.rand(())) - 0.5)
        view = view * gain + shift
        if self.noise_std > 0:
            view = view + self.noise_std * torch.randn_like(view)
        return view


# --------------------------------------------------------------------------------------------
# masked reconstruction
# --------------------------------------------------------------------------------------------
def as_patch(patch_size: int | Sequence[int]) -> Shape3D:
    if isinstance(patch_size, int):
        return (patch_size, patch_size, patch_size)
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3:
        raise ValueError(f"patch size must be an int or three ints, got {patch_size!r}")
    return patch  # type: ignore[return-value]


def random_cube_mask(
    batch: int,
    shape: Shape3D,
    patch_size: int | Sequence[int],
    mask_ratio: float,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``[B, 1, D, H, W]`` boolean mask, True where hidden: ``round(mask_ratio * n)`` of the ``n``
    cubes of the patch grid (at least one, at most ``n - 1``), chosen per volume."""
    patch = as_patch(patch_size)
    grid = tuple(math.ceil(side / p) for side, p in zip(shape, patch, strict=True))
    n_cubes = grid[0] * grid[1] * grid[2]
    n_masked = min(max(1, round(mask_ratio * n_cubes)), max(1, n_cubes - 1))
    order = torch.rand(batch, n_cubes, device=device).argsort(dim=1)
    cubes = torch.zeros(batch, n_cubes, dtype=torch.bool, device=device)
    cubes.scatter_(1, order[:, :n_masked], True)
    cubes = cubes.reshape(batch, 1, *grid)
    for axis, p in enumerate(patch):
        cubes = cubes.repeat_interleave(p, dim=axis + 2)
    return cubes[:, :, : shape[0], : shape[1], : shape[2]]


class MaskedDecoder(nn.Module):
    """Pooled features ``[B, F]`` -> a reconstructed volume ``[B, 1, D, H, W]``.

    A linear layer fills a coarse grid (one cell per mask cube, at most 8 per axis) of
    ``channels`` maps, trilinear up-sampling brings it to the volume's size, and
    ``conv3x3x3 -> ReLU -> conv1x1x1`` refines it. Deliberately light: the backbone has to
    carry the information about the hidden cubes.
    """

    def __init__(
        self,
        in_features: int,
        shape: Shape3D,
        patch_size: int | Sequence[int],
        channels: int = 16,
        max_grid: int = 8,
    ) -> None:
        super().__init__()
        patch = as_patch(patch_size)
        self.shape = tuple(shape)
        self.grid = tuple(
            max(1, min(math.ceil(side / p), max_grid)) for side, p in zip(shape, patch, strict=True)
        )
        self.channels = channels
        self.fc = nn.Linear(in_features, channels * math.prod(self.grid))
        self.refine = nn.Sequential(
            nn.Conv3d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(channels, 1, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        coarse = self.fc(features).reshape(-1, self.channels, *self.grid)
        up = F.interpolate(coarse, size=self.shape, mode="trilinear", align_corners=False)
        return self.refine(up)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the hidden voxels only."""
    weight = mask.to(prediction.dtype)
    return ((prediction.float() - target.float()) ** 2 * weight).sum() / weight.sum().clamp_min(1)
