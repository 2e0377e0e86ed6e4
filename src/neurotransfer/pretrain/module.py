"""The LightningModule that pre-trains a plain ``nn.Module`` backbone on one or more objectives.

The objectives' heads (covariate regression, SimCLR projection, masked-reconstruction decoder)
live here and are discarded afterwards: only the backbone is saved. The total loss is the
unweighted sum of the objectives' losses; each is logged as ``train/<objective>_loss``
(per epoch), the sum as ``train/loss``. AdamW with linear warm-up then cosine annealing per
step (:func:`neurotransfer.train.schedules.warmup_cosine_factor`), the schedule fine-tuning
uses too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import nn

from neurotransfer.pretrain.objectives import (
    CovariateHead,
    MaskedDecoder,
    ProjectionHead,
    Shape3D,
    VolumeAugment,
    masked_mse,
    nt_xent,
    random_cube_mask,
)
from neurotransfer.train.schedules import warmup_cosine_factor

OBJECTIVES = ("covariates", "simclr", "masked")


@dataclass(frozen=True)
class ObjectiveConfig:
    """What the objectives need besides the backbone (plain values, no settings classes)."""

    input_shape: Shape3D
    n_covariates: int = 0
    temperature: float = 0.1
    projection_dim: int = 64
    hidden_dim: int = 128
    crop_scale: tuple[float, float] = (0.6, 1.0)
    noise_std: float = 0.05
    mask_ratio: float = 0.6
    mask_patch: int | tuple[int, int, int] = 8


@dataclass(frozen=True)
class PretrainOptim:
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: int = 1
    epochs: int = 1


class PretrainModule(L.LightningModule):
    """Backbone + objective heads; ``training_step`` sums the objectives' losses."""

    def __init__(
        self,
        backbone: nn.Module,
        objectives: Sequence[str],
        config: ObjectiveConfig,
        optim: PretrainOptim,
    ) -> None:
        super().__init__()
        unknown = [o for o in objectives if o not in OBJECTIVES]
        if unknown or not objectives:
            raise ValueError(
                f"objectives must be a non-empty subset of {OBJECTIVES}, got {unknown}"
            )
        self.backbone = backbone
        self.objectives = tuple(objectives)
        self.config = config
        self.optim = optim
        features = int(backbone.out_features)
        self.heads = nn.ModuleDict()
        if "covariates" in self.objectives:
            if config.n_covariates < 1:
                raise ValueError("the covariates objective needs at least one covariate")
            self.heads["covariates"] = CovariateHead(features, config.n_covariates)
        if "simclr" in self.objectives:
            self.heads["simclr"] = ProjectionHead(
                features, config.hidden_dim, config.projection_dim
            )
            self.augment = VolumeAugment(config.crop_scale, config.noise_std)
        if "masked" in self.objectives:
            self.heads["masked"] = MaskedDecoder(features, config.input_shape, config.mask_patch)

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["image"]
        out: dict[str, torch.Tensor] = {}
        if "covariates" in self.objectives:
            out["covariates"] = self.heads["covariates"].loss(
                self.backbone(images), batch["covariates"]
            )
        if "simclr" in self.objectives:
            with torch.no_grad():
                view1, view2 = self.augment(images), self.augment(images)
            projection = self.heads["simclr"]
            out["simclr"] = nt_xent(
                projection(self.backbone(view1)),
                projection(self.backbone(view2)),
                self.config.temperature,
            )
        if "masked" in self.objectives:
            mask = random_cube_mask(
                images.shape[0],
                tuple(images.shape[2:]),
                self.config.mask_patch,
                self.config.mask_ratio,
                device=images.device,
            )
            reconstruction = self.heads["masked"](self.backbone(images.masked_fill(mask, 0.0)))
            out["masked"] = masked_mse(reconstruction, images, mask)
        return out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self.losses(batch)
        total = torch.stack(list(losses.values())).sum()
        size = batch["image"].shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}_loss", value, on_step=False, on_epoch=True, batch_size=size)
        self.log("train/loss", total, on_step=False, on_epoch=True, batch_size=size)
        return total

    def configure_optimizers(self) -> dict[str, Any]:
        decayed = [p for p in self.parameters() if p.requires_grad and p.ndim > 1]
        plain = [p for p in self.parameters() if p.requires_grad and p.ndim <= 1]
        optimizer = torch.optim.AdamW(
            [
                {"params": decayed, "weight_decay": self.optim.weight_decay},
                {"params": plain, "weight_decay": 0.0},
            ],
            lr=self.optim.lr,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total // max(1, self.optim.epochs))
        warmup = min(self.optim.warmup_epochs * steps_per_epoch, total - 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine_factor(step, warmup, total)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
