"""Fake evaluation outputs (metrics JSON + per-subject predictions) as the evaluate stage writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def write_eval_outputs(root: Path, task: str, kind: str, quality: float, seed: int = 0) -> None:
    """`metrics/eval/<task>.json` and `reports/eval/<task>/predictions.csv` under `root`.

    The same subjects and targets for every call with the same task; `quality` sets how well the
    predictions track the target, `seed` their noise.
    """
    subjects = np.random.default_rng(123)
    n = 60
    split = np.array(["train"] * 10 + ["test"] * 30 + ["ood_test"] * 20)
    noise = np.random.default_rng(seed).normal(size=n)
    if kind == "binary":
        target = (subjects.random(n) < 0.5).astype(float)
        prediction = 1 / (1 + np.exp(-(quality * (2 * target - 1) + noise)))
    else:
        target = subjects.uniform(40, 80, n)
        prediction = target + noise * 10 / max(quality, 0.1)
    frame = pd.DataFrame(
        {
            "subject_id": [f"sub-{i:03d}" for i in range(n)],
            "dataset": "adni",
            "site": "siteA",
            "split": split,
            "target": target,
            "prediction": prediction,
        }
    )
    if kind == "regression":
        frame["prediction_corrected"] = prediction
    out = root / "reports/eval" / task
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "predictions.csv", index=False)
    headline = "auc" if kind == "binary" else "mae"
    value = 0.5 + quality / 10 if kind == "binary" else 10 / quality
    scores = {headline: {"value": value, "ci_low": value - 0.1, "ci_high": value + 0.1}}
    if kind == "regression":  # a different value, so a table showing it in mae's place fails
        scores["mae_corrected"] = {"value": value + 1, "ci_low": value, "ci_high": value + 2}
    model_metrics = {s: {"metrics": dict(scores)} for s in ("test", "ood_test")}
    metrics = {
        "task": task,
        "kind": kind,
        "model": "sfcn",
        "init": "scratch",
        "model_metrics": model_metrics,
        "baselines": {"mean_predictor": {"test": {headline: 0.5}, "ood_test": {headline: 0.5}}},
    }
    (root / "metrics/eval").mkdir(parents=True, exist_ok=True)
    (root / "metrics/eval" / f"{task}.json").write_text(json.dumps(metrics), encoding="utf-8")
