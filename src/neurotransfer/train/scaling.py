"""Data-scaling curves: nested, stratified fractions of a task's training subjects, and the
curve's figure.

For every seed, the task's training subjects are put in one random order, stratified so that
every prefix keeps the label (binary tasks) and site mix of the whole as closely as possible;
the subset for fraction ``f`` is the first ``ceil(f * n)`` subjects of that order. Subsets of
one seed are therefore nested (a smaller fraction's subjects are a subset of a larger one's),
and a curve measures the value of more data rather than of different data. The ``scaling``
stage (``neurotransfer.stages.scaling``) trains and scores a model on each subset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def _strata(frame: pd.DataFrame, kind: str) -> pd.Series:
    """One stratum label per subject: label x site for binary tasks, site for regression."""
    per_subject = frame.groupby("subject_id", sort=True).first()
    if kind == "binary":
        return per_subject["target"].astype(int).astype(str) + "|" + per_subject["site"].astype(str)
    return per_subject["site"].astype(str)


def subject_order(frame: pd.DataFrame, kind: str, seed: int) -> list[str]:
    """The training subjects in one random order whose every prefix is stratified.

    Within each stratum the subjects are shuffled; the i-th of a stratum of n gets the key
    ``(i + u) / n`` (u uniform in [0, 1)), and sorting by key interleaves the strata in
    proportion to their sizes.
    """
    strata = _strata(frame, kind)
    rng = np.random.default_rng(seed)
    keys: dict[str, float] = {}
    for _, members in strata.groupby(strata, sort=True):
        subjects = list(members.index)
        rng.shuffle(subjects)
        offsets = rng.random(len(subjects))
        for i, (subject, u) in enumerate(zip(subjects, offsets, strict=True)):
            keys[str(subject)] = (i + u) / len(subjects)
    return sorted(keys, key=lambda s: (keys[s], s))


def nested_subsets(
    frame: pd.DataFrame, kind: str, fractions: Sequence[float], seed: int
) -> dict[float, list[str]]:
    """Subject ids for each fraction: prefixes of one stratified order, hence nested.

    A subset has at least two subjects and, for binary tasks, both classes (the prefix grows
    until it has them). Raises ValueError naming the fraction when that is impossible.
    """
    if any(not 0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"fractions must lie in (0, 1], got {list(fractions)}")
    order = subject_order(frame, kind, seed)
    n = len(order)
    label = frame.groupby("subject_id")["target"].first()
    subsets: dict[float, list[str]] = {}
    for fraction in sorted(fractions):
        size = min(n, max(2, math.ceil(fraction * n - 1e-9)))
        if kind == "binary":
            while size < n and label.loc[order[:size]].nunique() < 2:
                size += 1
            if label.loc[order[:size]].nunique() < 2:
                raise ValueError(
                    f"fraction {fraction}: the training split has one class only ({n} subjects)"
                )
        if size < 2:
            raise ValueError(f"fraction {fraction}: fewer than 2 training subjects ({n})")
        subsets[fraction] = order[:size]
    return subsets


def plot_curve(curve: pd.DataFrame, path: Path) -> None:
    """Metric vs training subjects, one line per split (seed mean, interval band of the mean)."""
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for split, rows in curve.groupby("split", sort=False):
        means = rows.groupby("n_train", sort=True)[["value", "ci_low", "ci_high"]].mean()
        ax.plot(means.index, means["value"], marker="o", label=str(split))
        ax.fill_between(means.index, means["ci_low"], means["ci_high"], alpha=0.2)
    metric = str(curve["metric"].iloc[0]) if not curve.empty else "metric"
    task = str(curve["task"].iloc[0]) if not curve.empty else ""
    ax.set_xlabel("training subjects")
    better = "lower" if metric.startswith(("mae", "rmse", "brier")) else "higher"
    ax.set_ylabel(f"{metric} ({better} is better)")
    ax.set_title(f"{task}: data scaling")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
