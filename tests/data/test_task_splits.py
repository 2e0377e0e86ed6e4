"""A task whose splits cannot train or score it fails when its rows are read, naming the task,
the split and what is missing (before any training)."""

from __future__ import annotations

import pandas as pd
import pytest

from neurotransfer.config import TaskSettings
from neurotransfer.data.tasks import TaskDataError, select_task_rows

AD = TaskSettings(
    kind="binary", target="diagnosis", positive="AD", negative="CN", datasets=["adni"]
)
AGE = TaskSettings(kind="regression", target="age", datasets=["adni"])


def manifest(counts: dict[str, dict[str, int]]) -> pd.DataFrame:
    """A manifest (no volumes needed) with `counts[split][diagnosis]` subjects."""
    rows = []
    for split, per_label in counts.items():
        for diagnosis, n in per_label.items():
            for _ in range(n):
                rows.append(
                    {
                        "subject_id": f"sub-{len(rows):03d}",
                        "dataset": "adni",
                        "site": "siteA",
                        "role": "downstream",
                        "age": 60.0 + len(rows),
                        "sex": "F",
                        "diagnosis": diagnosis,
                        "split": split,
                        "path": f"adni/sub-{len(rows):03d}.npy",
                        "exclusion_reason": "",
                    }
                )
    return pd.DataFrame(rows)


BALANCED = {s: {"AD": 3, "CN": 3} for s in ("train", "val", "test")}


def test_balanced_splits_pass() -> None:
    rows = select_task_rows(manifest(BALANCED), "ad", AD)
    assert len(rows) == 18 and set(rows["target"]) == {0.0, 1.0}


@pytest.mark.parametrize(
    ("split", "labels", "expected"),
    [
        ("val", {"CN": 4}, "task 'ad': split 'val' has no positive (AD) subjects"),
        ("test", {"AD": 4}, "task 'ad': split 'test' has no negative (CN) subjects"),
        ("train", {"AD": 1}, "task 'ad': split 'train' has 1 subject(s), at least 2 needed"),
    ],
)
def test_binary_split_missing_a_class_names_task_split_and_class(
    split: str, labels: dict[str, int], expected: str
) -> None:
    with pytest.raises(TaskDataError) as excinfo:
        select_task_rows(manifest({**BALANCED, split: labels}), "ad", AD)
    message = str(excinfo.value)
    assert message.startswith(expected) and "\n" not in message
    assert "tasks.ad.datasets" in message and "data.splits" in message


def test_regression_needs_subjects_in_every_split_but_no_classes() -> None:
    assert len(select_task_rows(manifest({**BALANCED, "val": {"CN": 2}}), "age", AGE)) == 14
    with pytest.raises(TaskDataError, match="task 'age': split 'val' has 0 subject"):
        select_task_rows(manifest({**BALANCED, "val": {}}), "age", AGE)


def test_ood_test_split_is_optional_and_may_hold_one_class() -> None:
    rows = select_task_rows(manifest({**BALANCED, "ood_test": {"AD": 2}}), "ad", AD)
    assert (rows["split"] == "ood_test").sum() == 2


def test_empty_test_split_is_left_to_evaluate() -> None:
    # Training needs train and val only; evaluate names a missing test split itself.
    rows = select_task_rows(manifest({**BALANCED, "test": {}}), "ad", AD)
    assert set(rows["split"]) == {"train", "val"}
