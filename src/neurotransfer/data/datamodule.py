"""Serving a task's splits from the cache, with MONAI augmentations."""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from monai import transforms as mt
from monai.data import DataLoader
from torch.utils.data import Dataset

from neurotransfer.config import AugmentSettings, TaskSettings
from neurotransfer.data.cache import read_cached_volume
from neurotransfer.data.manifest import read_manifest
from neurotransfer.data.splits import CV_SPLIT, fold_split
from neurotransfer.data.tasks import select_task_rows

SPLITS = ("train", "val", "test", "ood_test")
# Left-right axis of a preprocessed volume (MNI152 space, RAS orientation).
LEFT_RIGHT_AXIS = 0


def build_augmentation(settings: AugmentSettings) -> mt.Compose:
    """Random left-right flip, small affine, contrast/scale, bias field, Gaussian noise.

    Only left-right flips: brains are near-symmetric across the midline, not front to back.
    """
    angle = math.radians(settings.rotate_deg)
    return mt.Compose(
        [
            mt.RandFlip(prob=settings.flip_prob, spatial_axis=LEFT_RIGHT_AXIS),
            mt.RandAffine(
                prob=settings.affine_prob,
                rotate_range=(angle, angle, angle),
                scale_range=(settings.scale,) * 3,
                padding_mode="zeros",
            ),
            mt.RandScaleIntensity(factors=0.1, prob=settings.intensity_prob),
            mt.RandAdjustContrast(prob=settings.intensity_prob, gamma=(0.8, 1.25)),
            mt.RandBiasField(prob=settings.bias_field_prob, coeff_range=(0.0, 0.2)),
            mt.RandGaussianNoise(prob=settings.noise_prob, std=settings.noise_std),
        ]
    )


class CachedVolumeDataset(Dataset):
    """Items of one split: cached fp16 arrays (no NIfTI decoding) plus labels.

    An item reads its whole array (4 MB at 128^3) and widens it to float32 in torch, which is
    vectorised: ~1 ms, where numpy's fp16 -> float32 ``astype`` takes ~8 ms per volume.
    """

    def __init__(self, rows: pd.DataFrame, root: Path, transform: mt.Compose | None = None) -> None:
        columns = ["path", "target", "subject_id", "site", "dataset"]
        # Plain tuples: pandas row access would cost more than reading a small volume.
        self.items = list(rows[columns].itertuples(index=False, name=None))
        self.root = Path(root)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, object]:
        path, target, subject_id, site, dataset = self.items[index]
        image = torch.from_numpy(read_cached_volume(self.root / path)).to(torch.float32)[None]
        if self.transform is not None:
            image = torch.as_tensor(self.transform(image), dtype=torch.float32)
            image = image.as_tensor() if hasattr(image, "as_tensor") else image
        return {
            "image": image.contiguous(),
            "target": torch.tensor(float(target), dtype=torch.float32),
            "subject_id": str(subject_id),
            "site": str(site),
            "dataset": str(dataset),
        }


class TaskDataModule(L.LightningDataModule):
    """A task's train/val/test/ood_test splits from the preprocessed cache.

    A manifest split into folds (``data.splits.mode: kfold``) needs `fold` and `n_folds`: the
    splits are then fold `fold`'s (``splits.fold_split``).
    """

    def __init__(
        self,
        manifest_path: str | Path,
        task_name: str,
        task: TaskSettings,
        batch_size: int,
        num_workers: int,
        augment: AugmentSettings,
        seed: int,
        root: str | Path = ".",
        fold: int | None = None,
        n_folds: int | None = None,
    ) -> None:
        super().__init__()
        self.manifest_path = Path(manifest_path)
        self.task_name = task_name
        self.task = task
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.seed = seed
        self.root = Path(root)
        self.fold = fold
        self.n_folds = n_folds
        self._rows: pd.DataFrame | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._rows is None:
            manifest = read_manifest(self.manifest_path)
            if (manifest["split"] == CV_SPLIT).any():
                if self.fold is None or self.n_folds is None:
                    raise ValueError(
                        f"{self.manifest_path}: the subjects are split into cross-validation "
                        "folds (data.splits.mode kfold): a fold must be chosen"
                    )
                manifest = manifest.assign(
                    split=fold_split(manifest["split"], manifest["fold"], self.n_folds, self.fold)
                )
            elif self.fold is not None:
                raise ValueError(
                    f"{self.manifest_path}: fold {self.fold} asked for, but the manifest has one "
                    "train/val/test split (data.splits.mode single): re-run the preprocess stage"
                )
            where = None if self.fold is None else (self.fold, self.n_folds)
            self._rows = select_task_rows(manifest, self.task_name, self.task, fold=where)

    def with_train_subjects(self, subjects: Collection[str]) -> TaskDataModule:
        """The same task data with the training split restricted to `subjects` (validation and
        test splits unchanged), sharing the rows already read: the manifest is not read again."""
        self.setup()
        assert self._rows is not None
        subset = TaskDataModule(
            self.manifest_path,
            self.task_name,
            self.task,
            self.batch_size,
            self.num_workers,
            self.augment,
            self.seed,
            self.root,
            self.fold,
            self.n_folds,
        )
        keep = self._rows["subject_id"].astype(str).isin({str(s) for s in subjects})
        subset._rows = self._rows[(self._rows["split"] != "train") | keep].reset_index(drop=True)
        return subset

    def frame(self, split: str) -> pd.DataFrame:
        """Task rows of `split`: ``subject_id``, ``path``, ``site``, ``dataset``, ``target``..."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        self.setup()
        assert self._rows is not None
        return self._rows[self._rows["split"] == split].reset_index(drop=True)

    def dataloader(self, split: str, augment: bool = False, shuffle: bool = False) -> DataLoader:
        rows = self.frame(split)
        transform = None
        if augment and self.augment.enabled:
            transform = build_augmentation(self.augment)
            transform.set_random_state(seed=self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        # Drop the last batch only when it would hold one sample (BatchNorm cannot train on it).
        drop_last = shuffle and len(rows) > self.batch_size and len(rows) % self.batch_size == 1
        return DataLoader(
            CachedVolumeDataset(rows, self.root, transform),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            drop_last=drop_last,
            generator=generator,
            persistent_workers=self.num_workers > 0,
            # Page-locked batches let the host-to-GPU copy overlap the previous step.
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", augment=True, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")
