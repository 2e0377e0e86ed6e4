"""Turning manifest rows into a task's labelled rows (``target`` column)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from neurotransfer.config import TaskSettings

log = logging.getLogger(__name__)


def select_task_rows(
    manifest: pd.DataFrame,
    task_name: str,
    task: TaskSettings,
    fold: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Rows of the task's datasets and subset, with a float ``target`` (1/0, or years).

    Excluded rows and rows without the task's label are removed and their counts logged.
    Raises ValueError naming the task when it cannot be formed, and :class:`TaskDataError`
    (:func:`check_task_splits`) when a split cannot train or score it. `fold` is ``(fold, k)``
    when the manifest's splits are one cross-validation fold's (for the error messages).
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
    rows = rows.reset_index(drop=True)
    check_task_splits(rows, task_name, task, fold)
    return rows


# Every stage that trains a task needs these splits (evaluate also fits regression's age-bias
# correction and the binary threshold on val). `test` may be empty here (a study scored only on
# held-out sites, or a training-cost benchmark): evaluate names it when it needs it. A non-empty
# test split of a binary task must hold both classes. ood_test is optional and may be one class.
REQUIRED_SPLITS = ("train", "val")
CHECKED_IF_PRESENT = ("test",)
MIN_SUBJECTS_PER_SPLIT = 2


class TaskDataError(ValueError):
    """A task's labelled rows cannot train or score it (a split empty or missing a class)."""


def check_task_splits(
    rows: pd.DataFrame, task_name: str, task: TaskSettings, fold: tuple[int, int] | None = None
) -> None:
    """Fail, naming the task, the split and what is missing, when a required split has fewer
    than two subjects or, for a binary task, lacks one of the classes.

    Called when a stage reads its task's rows (``TaskDataModule.setup``), before any training:
    a validation split without positives would otherwise train a whole schedule against an
    undefined AUC. ``rows`` are :func:`select_task_rows`' (``split``, ``subject_id``,
    ``target``). With `fold` ``(f, k)`` the rows are cross-validation fold f's, and the
    message names the fold and ``data.splits.k``.
    """
    fix = (
        f"add subjects to tasks.{task_name}.datasets, widen tasks.{task_name}.subset, or give "
        "the split a larger fraction (data.splits) and re-run preprocess"
    )
    name = f"task {task_name!r}"
    if fold is not None:
        name = f"task {task_name!r}, cross-validation fold {fold[0]} of {fold[1]}"
        fix = (
            f"lower data.splits.k (now {fold[1]}; each fold's test and validation folds need "
            f"at least {MIN_SUBJECTS_PER_SPLIT} subjects"
            + (" and both classes" if task.kind == "binary" else "")
            + f"), or add subjects to tasks.{task_name}.datasets, and re-run preprocess"
        )
    for split in REQUIRED_SPLITS + CHECKED_IF_PRESENT:
        in_split = rows[rows["split"] == split]
        n_subjects = int(in_split["subject_id"].nunique())
        # Every fold's test fold is scored: there it is required.
        if split in CHECKED_IF_PRESENT and n_subjects == 0 and fold is None:
            continue
        if n_subjects < MIN_SUBJECTS_PER_SPLIT:
            raise TaskDataError(
                f"{name}: split {split!r} has {n_subjects} subject(s), at least "
                f"{MIN_SUBJECTS_PER_SPLIT} needed; {fix}"
            )
        if task.kind != "binary":
            continue
        for value, kind, label in (
            (1.0, "positive", task.positive),
            (0.0, "negative", task.negative),
        ):
            if not (in_split["target"] == value).any():
                raise TaskDataError(
                    f"{name}: split {split!r} has no {kind} ({label}) subjects "
                    f"(its {n_subjects} subjects are all "
                    f"{task.negative if value == 1.0 else task.positive}); a binary task needs "
                    f"both classes in {', '.join(REQUIRED_SPLITS + CHECKED_IF_PRESENT)}: {fix}"
                )
