"""The LightningModule that fine-tunes a backbone plus a task head.

It receives a plain ``nn.Module`` backbone (lightning-hydra-template style), so the same recipe
(optimiser, schedule, early-stopping signal) is applied whatever the architecture or the
initialisation, which is what makes pre-training variants comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAUROC
from torchmetrics.regression import MeanAbsoluteError

from neurotransfer.train.schedules import warmup_cosine_factor

TaskKind = Literal["binary", "regression"]
# What early stopping and best-epoch selection follow: the validation loss, or the task metric
# (AUC / MAE), which saturates on a few dozen validation subjects (AUC 1.0 while the
# probabilities barely separate the classes) where the loss still moves.
MonitorQuantity = Literal["loss", "metric"]


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    head_lr: float | None = None
    weight_decay: float = 1e-2
    warmup_epochs: int = 1
    max_epochs: int = 10
    layer_decay: float = 1.0
    linear_probe: bool = False


def layerwise_param_groups(
    layer_groups: list[list[nn.Parameter]], base_lr: float, decay: float, weight_decay: float
) -> list[dict[str, Any]]:
    """One optimiser group per backbone layer group, the LR shrinking by `decay` per layer
    counted back from the output (BEiT/ELECTRA-style layer-wise LR decay). Biases and norm
    weights (1-D tensors) get no weight decay."""
    groups: list[dict[str, Any]] = []
    depth = len(layer_groups)
    for index, params in enumerate(layer_groups):
        trainable = [p for p in params if p.requires_grad]
        if not trainable:
            continue
        lr = base_lr * decay ** (depth - 1 - index)
        decayed = [p for p in trainable if p.ndim > 1]
        plain = [p for p in trainable if p.ndim <= 1]
        if decayed:
            groups.append({"params": decayed, "lr": lr, "weight_decay": weight_decay})
        if plain:
            groups.append({"params": plain, "lr": lr, "weight_decay": 0.0})
    return groups


class TaskModule(L.LightningModule):
    """Backbone + one-output head for a binary or regression task.

    Regression targets are standardised with the training split's mean and sd (stored as
    buffers, so a saved model predicts in years without outside state).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        kind: TaskKind,
        optim: OptimConfig,
        layer_groups: list[list[nn.Parameter]] | None = None,
        target_mean: float = 0.0,
        target_std: float = 1.0,
    ) -> None:
        super().__init__()
        if kind not in ("binary", "regression"):
            raise ValueError(f"unknown task kind {kind!r}; expected 'binary' or 'regression'")
        if target_std <= 0:
            raise ValueError(f"target_std must be positive, got {target_std}")
        self.backbone = backbone
        self.head = head
        self.kind: TaskKind = kind
        self.optim = optim
        self._layer_groups = layer_groups
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))
        if optim.linear_probe:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        self.loss_fn: nn.Module = nn.BCEWithLogitsLoss() if kind == "binary" else nn.MSELoss()
        self.val_metric = BinaryAUROC() if kind == "binary" else MeanAbsoluteError()
        # The mean validation loss over subjects, as a torchmetrics metric so that DDP ranks
        # sum their (loss x batch size) and counts before dividing: every rank then sees the
        # same value and picks the same epoch, as with the task metric.
        self.val_loss_mean = MeanMetric()

    @property
    def metric(self) -> tuple[str, Literal["min", "max"]]:
        """The task's validation metric and the direction that is better."""
        return ("val_auc", "max") if self.kind == "binary" else ("val_mae", "min")

    def monitor_for(self, quantity: MonitorQuantity) -> tuple[str, Literal["min", "max"]]:
        """The logged key (and its better direction) that early stopping and best-epoch
        selection follow: ``val_loss`` (BCE or the standardised-target MSE) or the metric."""
        if quantity == "loss":
            return "val_loss", "min"
        if quantity == "metric":
            return self.metric
        raise ValueError(f"unknown monitor {quantity!r}; expected 'loss' or 'metric'")

    def train(self, mode: bool = True) -> TaskModule:
        super().train(mode)
        if self.optim.linear_probe:
            # A frozen backbone keeps its normalisation statistics too: a linear probe measures
            # the pre-trained features as they are.
            self.backbone.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw output per sample: a logit (binary) or a standardised value (regression)."""
        return self.head(self.backbone(images)).reshape(-1)

    def predict_values(self, images: torch.Tensor) -> torch.Tensor:
        """Predictions in task units: probability of the positive class, or years."""
        return self.to_task_units(self(images))

    def to_task_units(self, out: torch.Tensor) -> torch.Tensor:
        """Raw outputs (logits or standardised values) as probabilities or years."""
        out = out.float()
        if self.kind == "binary":
            return torch.sigmoid(out)
        return out * self.target_std + self.target_mean

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self(batch["image"]).float()
        target = batch["target"].float().reshape(-1)
        if self.kind == "regression":
            target = (target - self.target_mean) / self.target_std
        return self.loss_fn(out, target), out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log(
            "train_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batch["target"]),
        )
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, out = self._loss(batch)
        target = batch["target"].float().reshape(-1)
        self.val_metric.update(
            self.to_task_units(out), target.long() if self.kind == "binary" else target
        )
        self.val_loss_mean.update(loss.detach(), weight=len(target))

    def on_validation_epoch_end(self) -> None:
        name, _ = self.metric
        self.log(name, self.val_metric.compute(), prog_bar=True)
        self.log("val_loss", self.val_loss_mean.compute(), prog_bar=True)
        self.val_metric.reset()
        self.val_loss_mean.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        head_lr = self.optim.head_lr or self.optim.lr
        groups: list[dict[str, Any]] = []
        if not self.optim.linear_probe:
            layer_groups = self._layer_groups or [list(self.backbone.parameters())]
            groups += layerwise_param_groups(
                layer_groups, self.optim.lr, self.optim.layer_decay, self.optim.weight_decay
            )
        groups += layerwise_param_groups(
            [list(self.head.parameters())], head_lr, 1.0, self.optim.weight_decay
        )
        # The fused CUDA kernel updates all parameters in one launch (same arithmetic).
        fused = all(p.is_cuda for g in groups for p in g["params"])
        optimizer = torch.optim.AdamW(groups, fused=fused or None)
        total = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, total // max(1, self.optim.max_epochs))
        warmup = self.optim.warmup_epochs * steps_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine_factor(step, warmup, total)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
