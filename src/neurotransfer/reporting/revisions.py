"""Read an experiment's evaluation outputs at any revision: the workspace, a commit or a `dvc exp`.

``metrics/eval/<task>.json`` is git-tracked, but the per-subject predictions
(``reports/eval/<task>/predictions.csv``) are a DVC output: at an older commit or an experiment
they exist only in the DVC cache. ``dvc.api.DVCFileSystem`` opens both kinds of file at a
revision (git objects for the first, the local cache, or a remote, for the second) and resolves
experiment names as well as branches, tags and SHAs, so no `dvc exp apply` or checkout touches
the user's workspace.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from neurotransfer import paths
from neurotransfer.config import declared_task_names

log = logging.getLogger(__name__)

METRICS_DIR = paths.EVAL_METRICS_DIR.as_posix()
PREDICTIONS = (paths.EVAL_REPORT_DIR / "{task}" / "predictions.csv").as_posix()
# One column per fine-tuning seed when the evaluate stage scored several (k: the seed value);
# `prediction` is then their mean. Without such columns the revision has one seed.
SEED_COLUMN = re.compile(r"^prediction_seed(-?\d+)$")
# The name a user passes for "the files as they are now", as `dvc exp show` calls it.
WORKSPACE = "workspace"


class RevisionError(RuntimeError):
    """A revision, or a file the comparison needs at it, cannot be read."""


class Reader(Protocol):
    def list_dir(self, path: str) -> list[str]: ...

    def read_text(self, path: str) -> str: ...


class WorkspaceReader:
    """Plain files under `root`: no git or DVC needed (the report stage, fast tests)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def list_dir(self, path: str) -> list[str]:
        folder = self.root / path
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def read_text(self, path: str) -> str:
        try:
            return (self.root / path).read_text(encoding="utf-8")
        except FileNotFoundError as err:
            raise RevisionError(f"{path} not found under {self.root}") from err


class DvcReader:
    """Files of a git + DVC repository at `rev` (None: the workspace)."""

    def __init__(self, root: Path, rev: str | None) -> None:
        from dvc.api import DVCFileSystem

        self.label = rev or WORKSPACE
        try:
            self.fs = DVCFileSystem(str(root), rev=rev)
        except Exception as err:  # dvc raises several unrelated types for an unknown revision
            raise RevisionError(f"cannot open revision {self.label!r} in {root}: {err}") from err

    def list_dir(self, path: str) -> list[str]:
        # DVCFileSystem opens the revision lazily: an unknown one fails at the first access.
        try:
            if not self.fs.isdir(path):
                return []
            return sorted(Path(p).name for p in self.fs.ls(path, detail=False))
        except Exception as err:
            raise RevisionError(f"cannot read revision {self.label!r}: {err}") from err

    def read_text(self, path: str) -> str:
        try:
            return self.fs.read_text(path, encoding="utf-8")
        except Exception as err:  # missing in git, or a DVC output absent from the cache
            raise RevisionError(
                f"cannot read {path} at {self.label!r}: {err}. An output of an experiment or "
                f"commit is read from the DVC cache: run `dvc pull` or `dvc exp pull` first."
            ) from err


@dataclass
class TaskResult:
    kind: str
    metrics: dict[str, Any]
    predictions: pd.DataFrame | None = None  # None when only the metrics were asked for


@dataclass
class ExperimentResults:
    label: str
    tasks: dict[str, TaskResult] = field(default_factory=dict)


def reader_for(root: Path, rev: str | None) -> Reader:
    """The workspace as plain files when `root` is not a DVC repository, DVC's view otherwise."""
    if (rev is None or rev == WORKSPACE) and not (Path(root) / ".dvc").is_dir():
        return WorkspaceReader(root)
    return DvcReader(root, None if rev == WORKSPACE else rev)


def read_results(
    reader: Reader, label: str, with_predictions: bool = True, tasks: list[str] | None = None
) -> ExperimentResults:
    """Every evaluated task's metrics (and per-subject predictions) readable through `reader`."""
    names = tasks or [
        name.removesuffix(".json")
        for name in reader.list_dir(METRICS_DIR)
        if name.endswith(".json")
    ]
    if tasks is None:
        declared = declared_tasks(reader)
        if declared is not None:
            stale = [name for name in names if name not in declared]
            if stale:
                # A task dropped from params leaves its git-tracked metrics file behind (DVC does
                # not delete a former output); its predictions are gone, so it is not a result.
                log.info("%s: skipping %s (not in that revision's tasks)", label, stale)
            names = [name for name in names if name in declared]
    results = ExperimentResults(label=label)
    for task in names:
        metrics = json.loads(reader.read_text(f"{METRICS_DIR}/{task}.json"))
        kind = metrics.get("kind")
        if kind not in ("binary", "regression"):
            raise RevisionError(f"{METRICS_DIR}/{task}.json at {label!r} has no valid 'kind'")
        predictions = None
        if with_predictions:
            text = reader.read_text(PREDICTIONS.format(task=task))
            predictions = pd.read_csv(io.StringIO(text), dtype={"subject_id": str, "site": str})
        results.tasks[task] = TaskResult(kind=kind, metrics=metrics, predictions=predictions)
    if not results.tasks:
        raise RevisionError(f"no evaluated task ({METRICS_DIR}/*.json) at {label!r}")
    return results


def seed_columns(predictions: pd.DataFrame, source: str) -> dict[int | None, str]:
    """``{seed: column}`` of a predictions table: its ``prediction_seed<k>`` columns in seed
    order, or ``{None: "prediction"}`` when it has none (one seed). `source` names the table in
    the error raised for a seed column that is not numeric or has missing values."""
    found = {
        int(match.group(1)): column
        for column in predictions.columns
        if (match := SEED_COLUMN.match(str(column)))
    }
    if not found:
        if "prediction" not in predictions.columns:
            raise RevisionError(f"{source}: predictions have no 'prediction' column")
        return {None: "prediction"}
    for column in found.values():
        values = pd.to_numeric(predictions[column], errors="coerce")
        if values.isna().any():
            raise RevisionError(
                f"{source}: seed column {column!r} has {int(values.isna().sum())} missing or "
                f"non-numeric value(s)"
            )
    return {seed: found[seed] for seed in sorted(found)}


def declared_tasks(reader: Reader) -> set[str] | None:
    """The task names of the revision's params.yaml, or None when it has none to read."""
    try:
        return declared_task_names(reader.read_text("params.yaml"))
    except RevisionError:
        return None


def read_revision(
    root: Path, rev: str | None, with_predictions: bool = True, tasks: list[str] | None = None
) -> ExperimentResults:
    """`read_results` of `rev` (a git rev, an experiment name, or `workspace`) in `root`."""
    return read_results(reader_for(root, rev), rev or WORKSPACE, with_predictions, tasks)
