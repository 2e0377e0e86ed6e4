"""Lightning DDP: two CPU processes (gloo) train to the same validation metrics as one process.

The two-process run is launched the way README documents a multi-node job, with
``torchrun --nproc_per_node 2`` (this file is its worker script), and ``strategy: ddp``.

Why the runs can agree: the training set is served in order. (Lightning's own distributed
sampler always shuffles the training set, seeded by the global seed and the epoch, so a real DDP
run sees another sample order than a single process; the data module below brings its own
unshuffled DistributedSampler, with ``use_distributed_sampler=False``, to isolate the arithmetic.)
The two ranks' batches of 8 (DistributedSampler deals samples alternately) then together hold
exactly the samples of the single process's batch of 16; DDP averages the two ranks' mean-loss
gradients, which is the single process's gradient. The backbone has no BatchNorm (per-rank
statistics would differ, and SyncBatchNorm needs CUDA) and no dropout. What remains is the
order of floating-point sums: tolerance 1e-4 (relative) on every epoch's validation MAE, which
torchmetrics syncs across ranks. Observed differences: ~2e-7 relative (~1e-6 years).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from neurotransfer.config import FinetuneSettings
from neurotransfer.train.fit import fit_task_model
from neurotransfer.train.module import OptimConfig, TaskModule
from tests.train.toys import TinyBackbone

REPO = Path(__file__).resolve().parents[2]
SHAPE = (8, 8, 8)
GLOBAL_BATCH = 16
EPOCHS = 4
RTOL = 1e-4


class AgeDataset(Dataset):
    """Volumes whose mean intensity carries the age."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.target = rng.uniform(20, 80, n).astype(np.float32)
        noise = rng.normal(0, 0.5, (n, 1, *SHAPE)).astype(np.float32)
        self.images = noise + ((self.target - 50) / 15)[:, None, None, None, None]

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": torch.from_numpy(self.images[i]), "target": torch.tensor(self.target[i])}


class AgeDataModule(L.LightningDataModule):
    def __init__(self, per_process_batch: int) -> None:
        super().__init__()
        self.batch = per_process_batch
        self.train_set, self.val_set = AgeDataset(64, seed=1), AgeDataset(32, seed=2)

    def loader(self, dataset: Dataset) -> DataLoader:
        world = self.trainer.world_size if self.trainer else 1
        sampler = None
        if world > 1:
            sampler = DistributedSampler(
                dataset, num_replicas=world, rank=self.trainer.global_rank, shuffle=False
            )
        return DataLoader(dataset, batch_size=self.batch, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_set)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_set)


class History(Callback):
    def __init__(self) -> None:
        self.val_mae: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.val_mae.append(float(trainer.callback_metrics["val_mae"]))


def weights_digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train(devices: int, strategy: str, log_dir: Path | None) -> dict[str, object]:
    L.seed_everything(0, workers=True)
    module = TaskModule(
        TinyBackbone(),
        nn.Linear(4, 1),
        "regression",
        OptimConfig(max_epochs=EPOCHS, lr=1e-2),
        target_mean=50.0,
        target_std=17.0,
    )
    settings = FinetuneSettings(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        precision="32",
        early_stopping_patience=0,
    )
    history = History()
    result = fit_task_model(
        module,
        AgeDataModule(GLOBAL_BATCH // devices),
        settings,
        log_dir=log_dir,
        enable_progress_bar=False,
        extra_callbacks=[history],
        use_distributed_sampler=False,
    )
    return {
        "best_score": result.best_score,
        "best_epoch": result.best_epoch,
        "val_mae": history.val_mae,
        "is_global_zero": result.is_global_zero,
        "weights": weights_digest(module),
    }


def run_two_process_ddp(out: Path, log_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(Path(__file__)),
        "--out",
        str(out),
        "--log-dir",
        str(log_dir),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_two_process_ddp_matches_single_process(tmp_path: Path) -> None:
    torch.set_num_threads(1)  # as each DDP process has (OMP_NUM_THREADS=1)
    single = train(devices=1, strategy="auto", log_dir=None)
    run_two_process_ddp(tmp_path / "ddp", tmp_path / "dvclive")
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]

    assert len(single["val_mae"]) == EPOCHS
    for rank in ranks:
        np.testing.assert_allclose(rank["val_mae"], single["val_mae"], rtol=RTOL)
        assert rank["best_epoch"] == single["best_epoch"]
        assert rank["best_score"] == pytest.approx(single["best_score"], rel=RTOL)
    # Every rank ends with rank 0's best weights, and only rank 0 is the global zero.
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert [r["is_global_zero"] for r in ranks] == [True, False]
    # dvclive logged once (rank 0 only): one row per epoch, not one per process.
    rows = (tmp_path / "dvclive" / "plots" / "metrics" / "val" / "mae.tsv").read_text().splitlines()
    assert len(rows) == 1 + EPOCHS


def test_speedups_keep_state_dict_keys_and_values() -> None:
    """channels-last and in-place compile (the GPU profile's) leave what is saved unchanged; the
    CPU profile's settings leave the module untouched."""
    from neurotransfer.train.fit import apply_speedups

    def module() -> TaskModule:
        torch.manual_seed(0)
        # Two input channels: a one-channel kernel is in both layouts at once.
        backbone = nn.Sequential(nn.Conv3d(2, 4, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten())
        return TaskModule(backbone, nn.Linear(4, 1), "binary", OptimConfig())

    channels_last = torch.channels_last_3d
    plain, fast = module(), module()
    apply_speedups(plain, FinetuneSettings())
    assert not plain.backbone[0].weight.is_contiguous(memory_format=channels_last)
    apply_speedups(fast, FinetuneSettings(channels_last=True, compile=True))
    assert fast.backbone[0].weight.is_contiguous(memory_format=channels_last)
    assert list(fast.state_dict()) == list(plain.state_dict())
    for key, value in plain.state_dict().items():
        assert torch.equal(fast.state_dict()[key], value), key


def main() -> None:
    """Worker: one DDP process under torchrun; writes its results to ``<out>/rank<r>.json``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--log-dir", type=Path, default=None)
    args = parser.parse_args()
    result = train(devices=int(os.environ["WORLD_SIZE"]), strategy="ddp", log_dir=args.log_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
