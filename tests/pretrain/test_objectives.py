"""Objectives: NT-Xent prefers matched views, 3D views and masks are well formed, masked
reconstruction and the Lightning module train."""

from __future__ import annotations

import pytest
import torch

from neurotransfer.models import build_backbone
from neurotransfer.pretrain.module import ObjectiveConfig, PretrainModule, PretrainOptim
from neurotransfer.pretrain.objectives import (
    MaskedDecoder,
    VolumeAugment,
    masked_mse,
    nt_xent,
    random_cube_mask,
)

SHAPE = (16, 16, 16)


def tiny_sfcn() -> torch.nn.Module:
    return build_backbone("sfcn", SHAPE, channels=(4, 8, 8), dropout=0.0)


def test_nt_xent_lower_for_matched_pairs_than_shuffled() -> None:
    torch.manual_seed(0)
    z1 = torch.randn(16, 8)
    z2 = z1 + 0.1 * torch.randn(16, 8)
    matched = nt_xent(z1, z2, temperature=0.1)
    shuffled = nt_xent(z1, z2[torch.roll(torch.arange(16), 1)], temperature=0.1)
    assert matched < shuffled
    assert matched < 0.1 < shuffled
    with pytest.raises(ValueError, match="at least 2"):
        nt_xent(z1[:1], z2[:1], 0.1)


def test_augmented_views_keep_shape_and_differ() -> None:
    torch.manual_seed(0)
    volumes = torch.rand(3, 1, *SHAPE)
    augment = VolumeAugment((0.6, 1.0), noise_std=0.05)
    view1, view2 = augment(volumes), augment(volumes)
    assert view1.shape == volumes.shape
    assert not torch.allclose(view1, view2)
    identity = VolumeAugment((1.0, 1.0), noise_std=0.0)
    assert identity(volumes).shape == volumes.shape  # no crop: flips and jitter only
    with pytest.raises(ValueError, match="crop_scale"):
        VolumeAugment((0.0, 1.0), 0.0)


def test_cube_mask_ratio_and_alignment() -> None:
    torch.manual_seed(0)
    mask = random_cube_mask(4, (16, 24, 16), patch_size=8, mask_ratio=0.5)
    assert mask.shape == (4, 1, 16, 24, 16) and mask.dtype == torch.bool
    cubes = mask[:, 0].reshape(4, 2, 8, 3, 8, 2, 8)
    # Every 8^3 cube is entirely hidden or entirely visible; 6 of 12 per volume are hidden.
    per_cube = cubes.float().mean(dim=(2, 4, 6))
    assert set(per_cube.unique().tolist()) <= {0.0, 1.0}
    assert (per_cube.sum(dim=(1, 2, 3)) == 6).all()
    assert not torch.equal(mask[0], mask[1])


def test_masked_loss_decreases_on_a_tiny_net() -> None:
    torch.manual_seed(0)
    backbone = tiny_sfcn()
    decoder = MaskedDecoder(backbone.out_features, SHAPE, patch_size=8)
    volumes = torch.rand(4, 1, *SHAPE)
    optimiser = torch.optim.Adam([*backbone.parameters(), *decoder.parameters()], lr=1e-2)
    losses = []
    for step in range(15):
        generator_state = torch.get_rng_state()
        torch.manual_seed(step)
        mask = random_cube_mask(4, SHAPE, 8, 0.6)
        torch.set_rng_state(generator_state)
        loss = masked_mse(decoder(backbone(volumes.masked_fill(mask, 0.0))), volumes, mask)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_masked_mse_counts_hidden_voxels_only() -> None:
    target = torch.zeros(1, 1, 2, 2, 2)
    prediction = torch.ones(1, 1, 2, 2, 2)
    mask = torch.zeros_like(target, dtype=torch.bool)
    mask[..., 0, 0, 0] = True
    prediction[..., 1, 1, 1] = 100.0  # visible: ignored
    assert float(masked_mse(prediction, target, mask)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "objectives", [("covariates",), ("simclr",), ("masked",), ("covariates", "simclr", "masked")]
)
def test_module_losses_and_gradients(objectives: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    module = PretrainModule(
        tiny_sfcn(),
        objectives,
        ObjectiveConfig(input_shape=SHAPE, n_covariates=2, mask_patch=8),
        PretrainOptim(),
    )
    batch = {"image": torch.rand(4, 1, *SHAPE), "covariates": torch.randn(4, 2)}
    losses = module.losses(batch)
    assert set(losses) == set(objectives)
    total = sum(losses.values())
    total.backward()
    assert all(p.grad is not None for p in module.backbone.parameters())
    with pytest.raises(ValueError, match="objectives"):
        PretrainModule(tiny_sfcn(), ("rotation",), ObjectiveConfig(SHAPE), PretrainOptim())
