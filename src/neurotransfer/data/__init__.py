"""Data: BIDS/CSV ingest, preprocessing onto the MNI grid, splits, the cache, the DataModule.

Heavy dependencies (torch, Lightning, MONAI) load only when the DataModule is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from neurotransfer.data.cache import load_cached_volume, read_cached_volume
from neurotransfer.data.manifest import (
    MANIFEST_COLUMNS,
    manifest_path,
    pool_rows,
    read_manifest,
    require_manifest,
)
from neurotransfer.data.tasks import select_task_rows

if TYPE_CHECKING:
    from neurotransfer.data.datamodule import TaskDataModule

__all__ = [
    "MANIFEST_COLUMNS",
    "TaskDataModule",
    "load_cached_volume",
    "manifest_path",
    "pool_rows",
    "read_cached_volume",
    "read_manifest",
    "require_manifest",
    "select_task_rows",
]


def __getattr__(name: str) -> Any:
    if name == "TaskDataModule":
        from neurotransfer.data.datamodule import TaskDataModule

        return TaskDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
