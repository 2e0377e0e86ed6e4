"""Turning manifest rows into a task's labelled rows (``target`` column)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from neurotransfer.config import TaskSettings

log = logging.getLogger(__name__)


def select_task_rows(manifest: pd.DataFrame, task_name: str, task: TaskSettings) -> pd.DataFrame:
    """Rows of the task's datasets and subset, with a float ``target`` (1/0, or years).

    Excluded rows and rows without the task's label are removed and their counts logged.
    Raises ValueError naming the task when it cannot be formed.
    """
    rows = manifest[manifest["dataset"].isin(task.datasets)]
    if rows.empty:
        raise ValueError(
            f"task {task_name!r}: the manifest has no rows of datasets {task.datasets}"
        )
    for column, allowed in task.subset.items():
        if column not in rows.columns:
            raise ValueError(f"task {task_name!r}: subset column {column!r} is not in the manifest")
        rows = rows[rows[column].astype(str).isin(allowed)]
    excluded = rows["split"] == "excluded"
    if excluded.any():
        log.info("task %s: %d excluded scan(s) left out", task_name, int(excluded.sum()))
    rows = rows[~excluded].copy()

    if task.kind == "regression":
        target = pd.to_numeric(rows[task.target], errors="coerce").astype(float)
    else:
        label = rows[task.target].astype(str)
        target = pd.Series(np.nan, index=rows.index)
        target[label == task.positive] = 1.0
        target[label == task.negative] = 0.0
    unlabelled = target.isna()
    if unlabelled.any():
        log.info(
            "task %s: %d scan(s) without a %s label usable by the task left out",
            task_name,
            int(unlabelled.sum()),
            task.target,
        )
    rows = rows[~unlabelled].assign(target=target[~unlabelled].astype(float))
    where = f"task {task_name!r} (datasets {task.datasets}, subset {task.subset})"
    if rows.empty:
        raise ValueError(f"{where}: no labelled rows")
    if task.kind == "binary":
        for split in ("train", "val", "test"):
            classes = set(rows.loc[rows["split"] == split, "target"])
            if split == "train" and len(classes) < 2:
                raise ValueError(
                    f"{where}: train split has one class only ({classes or 'none'}; "
                    f"positive={task.positive!r}, negative={task.negative!r})"
                )
        if not (rows["target"] == 1.0).any():
            raise ValueError(f"{where}: no rows with the positive label {task.positive!r}")
    return rows.reset_index(drop=True)
