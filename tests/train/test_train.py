"""The fine-tuning recipe: schedule shape, layer-wise LR, learning, determinism, safe saving."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from neurotransfer.config import FinetuneSettings
from neurotransfer.train.checkpoint import MODEL_FILE, save_task_model
from neurotransfer.train.fit import BestWeights, FitResult, fit_task_model
from neurotransfer.train.module import OptimConfig, TaskModule, layerwise_param_groups
from neurotransfer.train.predict import predict_frame
from neurotransfer.train.schedules import warmup_cosine_factor
from tests.train.toys import TinyBackbone

SHAPE = (8, 8, 8)


class SignalDataset(Dataset):
    """Volumes whose mean intensity carries the label (binary) or the age (regression)."""

    def __init__(self, n: int, kind: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        if kind == "binary":
            self.target = rng.integers(0, 2, n).astype(np.float32)
            signal = self.target * 1.5
        else:
            self.target = rng.uniform(20, 80, n).astype(np.float32)
            signal = (self.target - 50) / 15
        noise = rng.normal(0, 0.5, (n, 1, *SHAPE)).astype(np.float32)
        self.images = noise + signal[:, None, None, None, None]
        self.sites = np.where(np.arange(n) % 2 == 0, "siteA", "siteB")

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": torch.from_numpy(self.images[i]),
            "target": torch.tensor(self.target[i]),
            "subject_id": f"sub-{i:03d}",
            "site": str(self.sites[i]),
            "dataset": "toy",
        }


class SignalDataModule(L.LightningDataModule):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.train_set = SignalDataset(64, kind, seed=1)
        self.val_set = SignalDataset(32, kind, seed=2)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=16, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=16)


class TwoConvBackbone(TinyBackbone):
    """TinyBackbone with a second convolution, 4 -> 4 channels: its kernel has a channel order
    to change (a one-channel kernel is channels-last and contiguous at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2 = nn.Conv3d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv2(torch.relu(self.conv(x))))).flatten(1)


def make_module(
    kind: str, backbone_type: type[nn.Module] = TinyBackbone, **optim: object
) -> TaskModule:
    torch.manual_seed(0)
    backbone = backbone_type()
    mean, std = (50.0, 17.0) if kind == "regression" else (0.0, 1.0)
    return TaskModule(
        backbone,
        nn.Linear(4, 1),
        kind,
        OptimConfig(max_epochs=8, lr=1e-2, **optim),
        target_mean=mean,
        target_std=std,
    )


def fit(
    kind: str,
    select_epoch: str = "best",
    monitor: str = "loss",
    precision: str = "32",
    channels_last: bool = False,
    backbone_type: type[nn.Module] = TinyBackbone,
    **optim: object,
) -> tuple[TaskModule, FitResult]:
    L.seed_everything(0, workers=True)
    module = make_module(kind, backbone_type, **optim)
    settings = FinetuneSettings(
        max_epochs=8,
        accelerator="cpu",
        precision=precision,
        channels_last=channels_last,
        early_stopping_patience=0,
        select_epoch=select_epoch,
        monitor=monitor,
    )
    result = fit_task_model(module, SignalDataModule(kind), settings, enable_progress_bar=False)
    return module, result


def train(kind: str, **settings: object) -> tuple[TaskModule, float]:
    """Fit with the default monitor (validation loss); return the kept epoch's task metric."""
    module, result = fit(kind, **settings)
    assert result.monitor == "val_loss"
    return module, result.kept_epoch_metrics["val_auc" if kind == "binary" else "val_mae"]


def test_warmup_then_cosine() -> None:
    factors = [warmup_cosine_factor(s, 10, 100) for s in range(100)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(factors[:10]))
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert factors[-1] < 0.01


def test_layerwise_decay_lowers_lr_towards_input() -> None:
    layers = [[nn.Parameter(torch.zeros(2, 2))] for _ in range(3)]
    groups = layerwise_param_groups(layers, base_lr=1.0, decay=0.5, weight_decay=0.1)
    assert [g["lr"] for g in groups] == [0.25, 0.5, 1.0]
    bias_groups = layerwise_param_groups([[nn.Parameter(torch.zeros(2))]], 1.0, 1.0, 0.1)
    assert bias_groups[0]["weight_decay"] == 0.0


@pytest.mark.slow
def test_binary_task_learns_beyond_chance() -> None:
    _, auc = train("binary")
    assert auc > 0.85


@pytest.mark.slow
def test_regression_beats_mean_predictor() -> None:
    module, mae = train("regression")
    val = SignalDataset(32, "regression", seed=2)
    mean_mae = float(np.abs(val.target - val.target.mean()).mean())
    assert mae < 0.6 * mean_mae
    frame, feats = predict_frame(module, DataLoader(val, batch_size=8), "val")
    assert feats.shape == (32, 4)
    assert frame["prediction"].between(0, 120).all()  # in years, not standardised units


@pytest.mark.slow
def test_same_seed_same_weights() -> None:
    first, score_a = train("binary")
    second, score_b = train("binary")
    assert score_a == score_b
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_linear_probe_freezes_backbone() -> None:
    module = make_module("binary", linear_probe=True)
    assert not any(p.requires_grad for p in module.backbone.parameters())
    module.train()
    assert not module.backbone.training
    assert all(p.requires_grad for p in module.head.parameters())


def test_save_is_atomic_and_replaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = make_module("binary")
    target = tmp_path / "models" / "ad"
    save_task_model(module, target, {"kind": "binary"})
    assert (target / MODEL_FILE).is_file()

    def explode(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # a kill arriving mid-write

    monkeypatch.setattr("neurotransfer.train.checkpoint.save_file", explode)
    with pytest.raises(KeyboardInterrupt):
        save_task_model(module, target, {"kind": "binary", "second": True})
    # The earlier model is intact and no temporary folder is left behind.
    assert json.loads((target / "meta.json").read_text()) == {"kind": "binary"}
    assert sorted(p.name for p in target.parent.iterdir()) == ["ad"]


def test_flip_tta_averages_a_volume_and_its_left_right_mirror() -> None:
    module = make_module("regression")
    volumes = SignalDataset(6, "regression", seed=3)
    # The same subjects mirrored left-right (spatial axis 0 = tensor axis 1 of [C, D, H, W]).
    mirrored = SignalDataset(6, "regression", seed=3)
    mirrored.images = np.ascontiguousarray(np.flip(volumes.images, axis=2))

    plain, feats = predict_frame(module, DataLoader(volumes, batch_size=4), "test")
    plain_mirror, _ = predict_frame(module, DataLoader(mirrored, batch_size=4), "test")
    tta, tta_feats = predict_frame(module, DataLoader(volumes, batch_size=4), "test", flip_tta=True)
    tta_mirror, _ = predict_frame(module, DataLoader(mirrored, batch_size=4), "test", flip_tta=True)

    # An untrained network on noise is not mirror-symmetric, so the flip changes predictions...
    assert not np.allclose(plain["prediction"], plain_mirror["prediction"], atol=1e-4)
    # ...and test-time flipping gives both views the same prediction, the mean of the two.
    np.testing.assert_allclose(tta["prediction"], tta_mirror["prediction"], rtol=1e-5)
    expected = (plain["prediction"] + plain_mirror["prediction"]) / 2
    np.testing.assert_allclose(tta["prediction"], expected, rtol=1e-5)
    np.testing.assert_array_equal(tta_feats, feats)  # features: the volume as given


def _val_mae(module: TaskModule) -> float:
    val = SignalDataModule("regression").val_set
    frame, _ = predict_frame(module, DataLoader(val, batch_size=16), "val")
    return float(np.abs(frame["prediction"] - frame["target"]).mean())


@pytest.mark.slow
def test_select_epoch_keeps_the_best_or_the_last_epochs_weights() -> None:
    best_module, best = fit("regression", select_epoch="best", monitor="metric")
    last_module, last = fit("regression", select_epoch="last", monitor="metric")
    assert best.monitor == last.monitor == "val_mae"
    # Same seed, same schedule: the two runs differ only in the weights they keep.
    assert last.best_epoch == last.epochs_run - 1 == 7
    assert best.best_score <= last.best_score
    # The loaded weights are the selected epoch's: they reproduce that epoch's validation MAE.
    assert _val_mae(best_module) == pytest.approx(best.best_score, rel=1e-4)
    assert _val_mae(last_module) == pytest.approx(last.best_score, rel=1e-4)


def test_select_last_epoch_refuses_early_stopping() -> None:
    with pytest.raises(ValueError, match="early_stopping_patience is 5: set it to 0"):
        FinetuneSettings(select_epoch="last", early_stopping_patience=5)


# --------------------------------------------------------------------------------------------
# What early stopping and best-epoch selection follow (finetune.monitor), on small validation
# sets where the AUC saturates while the loss still falls.
# --------------------------------------------------------------------------------------------
# Validation values per epoch: the AUC reaches 1.0 at epoch 1 (ties at 2), then dips; the loss
# keeps falling to the end.
SATURATED_AUC = [0.80, 1.00, 1.00, 0.98, 0.98]
FALLING_LOSS = [0.690, 0.660, 0.600, 0.520, 0.450]


def replay(monitor: str, mode: str, values: dict[str, list[float]]) -> tuple[BestWeights, float]:
    """Feed BestWeights one epoch's logged values at a time, as Lightning would; the module's
    single weight is set to the epoch number, so the kept state says which epoch it is."""
    keeper = BestWeights(monitor, mode)
    module = nn.Linear(1, 1, bias=False)
    for epoch in range(len(next(iter(values.values())))):
        module.weight.data.fill_(float(epoch))
        trainer = SimpleNamespace(
            sanity_checking=False,
            current_epoch=epoch,
            callback_metrics={k: torch.tensor(v[epoch]) for k, v in values.items()},
        )
        keeper.on_validation_end(trainer, module)  # type: ignore[arg-type]
    assert keeper.best_state is not None
    return keeper, float(keeper.best_state["weight"].item())


def test_loss_monitor_keeps_the_later_epoch_when_the_auc_saturates() -> None:
    values = {"val_auc": SATURATED_AUC, "val_loss": FALLING_LOSS}
    by_loss, loss_weight = replay("val_loss", "min", values)
    assert by_loss.best_epoch == 4 and loss_weight == 4.0
    # The kept epoch's task metric is recorded alongside the monitored value.
    assert by_loss.best_metrics == pytest.approx({"val_auc": 0.98, "val_loss": 0.45})
    # The old signal, the AUC: epochs 1 and 2 tie at 1.0, and the later one is kept.
    by_metric, metric_weight = replay("val_auc", "max", values)
    assert by_metric.best_epoch == 2 and metric_weight == 2.0
    assert by_metric.best_score == 1.0


def test_ties_within_tolerance_go_to_the_later_epoch() -> None:
    # Epoch 2 equals epoch 1 up to float noise: a tie, the later epoch wins; epoch 3 is worse by
    # a real margin (1e-4) and is not kept, nor is epoch 4's NaN.
    losses = [0.5, 0.4, 0.4 * (1 + 1e-8), 0.4001, float("nan")]
    keeper, weight = replay("val_loss", "min", {"val_loss": losses})
    assert keeper.best_epoch == 2 and weight == 2.0
    # The same for a maximised metric.
    keeper, _ = replay("val_auc", "max", {"val_auc": [0.7, 0.9, 0.9, 0.8999]})
    assert keeper.best_epoch == 2


class ScriptedValidation(TaskModule):
    """Trains for real, but logs scripted validation values (one per epoch), so that early
    stopping meets a saturated AUC with a falling loss."""

    AUC = (0.70, 1.00, 1.00, 1.00, 1.00, 1.00, 1.00, 1.00)
    LOSS = (0.69, 0.66, 0.63, 0.60, 0.57, 0.54, 0.51, 0.48)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        epoch = self.current_epoch
        self.log("val_auc", self.AUC[epoch])
        self.log("val_loss", self.LOSS[epoch])


class SmallSignalData(SignalDataModule):
    def __init__(self) -> None:
        super().__init__("binary")
        self.train_set = SignalDataset(16, "binary", seed=1)
        self.val_set = SignalDataset(8, "binary", seed=2)


def scripted_fit(monitor: str) -> FitResult:
    torch.manual_seed(0)
    module = ScriptedValidation(TinyBackbone(), nn.Linear(4, 1), "binary", OptimConfig())
    settings = FinetuneSettings(
        max_epochs=8,
        accelerator="cpu",
        precision="32",
        early_stopping_patience=2,
        monitor=monitor,
    )
    return fit_task_model(module, SmallSignalData(), settings, enable_progress_bar=False)


def test_early_stopping_follows_the_loss_not_the_saturated_auc() -> None:
    by_loss = scripted_fit("loss")
    # The loss improves every epoch: no early stop, the last epoch is kept.
    assert by_loss.monitor == "val_loss"
    assert by_loss.epochs_run == 8 and by_loss.best_epoch == 7
    assert by_loss.best_score == pytest.approx(0.48)
    assert by_loss.kept_epoch_metrics["val_auc"] == 1.0
    # monitor: metric is the old signal: the AUC stops improving at epoch 1, so training stops
    # after `patience` more epochs (epoch 3), as before; of the tied epochs the last is kept.
    by_metric = scripted_fit("metric")
    assert by_metric.monitor == "val_auc"
    assert by_metric.epochs_run == 4 and by_metric.best_epoch == 3
    assert by_metric.best_score == 1.0


def test_monitor_setting_names_the_logged_value() -> None:
    binary, regression = make_module("binary"), make_module("regression")
    assert binary.monitor_for("loss") == regression.monitor_for("loss") == ("val_loss", "min")
    assert binary.monitor_for("metric") == ("val_auc", "max")
    assert regression.monitor_for("metric") == ("val_mae", "min")
    assert FinetuneSettings().monitor == "loss"
    with pytest.raises(ValueError, match="monitor"):
        FinetuneSettings(monitor="auc")


@pytest.mark.slow
def test_cpu_bf16_channels_last_is_deterministic_and_learns() -> None:
    # The CPU speed options (benchmarks/train_step_cpu.py): bf16 autocast and channels-last-3d
    # weights. Two runs with one seed give bit-identical weights, and the model still learns.
    options = {"precision": "bf16-mixed", "channels_last": True, "backbone_type": TwoConvBackbone}
    first, result = fit("binary", **options)
    second, again = fit("binary", **options)
    kernel = first.backbone.conv2.weight
    assert kernel.is_contiguous(memory_format=torch.channels_last_3d)
    assert not kernel.is_contiguous()
    assert result.kept_epoch_metrics == again.kept_epoch_metrics
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert result.kept_epoch_metrics["val_auc"] > 0.85
