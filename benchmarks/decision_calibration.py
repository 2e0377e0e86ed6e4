"""Calibration of `compare`'s decision rule by simulated comparisons with known truth.

    .venv/bin/python benchmarks/decision_calibration.py [--reps 4000] [--seed 0]
        [--out benchmarks/results/decision_calibration.json]

Each simulated comparison draws a test set of n subjects and two arms (A, B) of k fine-tuned
seeds each, with three sources of noise:

- subject: a per-subject difficulty shared by both arms (the pairing), and for the regression
  task a per-subject error scale (log-normal), so absolute errors are skewed and heteroscedastic;
- seed: a per-seed shift of the whole model (a bias in years for the regression task, a change
  of discrimination for the binary one), independent between arms;
- subject-by-seed: independent noise per (seed, subject).

Under the null the two arms are exchangeable (an A/A comparison: same configuration, other
seeds); with a planted effect B's errors are smaller (regression) or its classes better
separated (binary). The primary decision is `decision.difference_moments` + the t rule of
`decision.compare_arms` on MAE (regression) or AUC (binary) pseudo-values, at alpha 0.05. It
reports, per (task, seed-noise level, n, seeds), the false-positive rate under the null and the
power with the planted effect, and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from neurotransfer.evaluation.decision import (  # noqa: E402
    auc_subject_variance,
    difference_moments,
    pseudo_values,
)

ALPHA = 0.05
SUBJECTS = (20, 100)
SEEDS = (3, 5)
# The sd of the per-seed shift relative to the subject-by-seed noise: none, comparable, dominant.
SEED_NOISE = {"none": 0.0, "moderate": 1.0, "dominant": 3.0}
# Planted effects: B's absolute errors 30% smaller; B's class separation (logit slope) +60%.
EFFECT = {"regression": 0.30, "binary": 0.60}


def simulate_comparisons(
    kind: str,
    n: int,
    seeds: int,
    reps: int,
    effect: float,
    seed_noise: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``(n,)`` and predictions ``(reps, 2 arms, seeds, n)`` of simulated comparisons."""
    if kind == "regression":
        target = rng.uniform(20.0, 80.0, n)
        scale = np.exp(rng.normal(0.0, 0.5, (reps, 1, 1, n)))  # skewed, heteroscedastic
        difficulty = rng.normal(0.0, 3.0, (reps, 1, 1, n))  # shared by both arms
        seed_bias = rng.normal(0.0, seed_noise, (reps, 2, seeds, 1))
        interaction = rng.normal(0.0, 3.0, (reps, 2, seeds, n))
        error = scale * (difficulty + interaction) + seed_bias
        error[:, 1] *= 1.0 - effect
        return target, target + error
    target = np.zeros(n)
    target[: n // 2] = 1.0
    difficulty = rng.normal(0.0, 1.0, (reps, 1, 1, n))
    seed_slope = rng.normal(0.0, 0.15 * seed_noise, (reps, 2, seeds, 1))
    interaction = rng.normal(0.0, 1.0, (reps, 2, seeds, n))
    slope = np.array([1.0, 1.0 + effect]).reshape(1, 2, 1, 1) + seed_slope
    logit = slope * (2.0 * target - 1.0) + difficulty + interaction
    return target, 1.0 / (1.0 + np.exp(-logit))


def primary_p_values(kind: str, target: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """The primary decision's two-sided p of every simulated comparison, as `compare` does it."""
    metric = "mae" if kind == "regression" else "auc"
    values = pseudo_values(kind, metric, target, predictions)
    subject_variance = None
    if metric == "auc":
        subject_variance = auc_subject_variance(target, predictions[:, 0], predictions[:, 1])
    delta, se, df, _ = difference_moments(
        values[:, 0], values[:, 1], subject_variance=subject_variance
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        p_values = 2.0 * stats.t.sf(np.abs(delta) / se, df)
    # A comparison with no variance at all (never happens here) counts as not rejected.
    return np.nan_to_num(p_values, nan=1.0)


def rejection_rate(
    kind: str,
    n: int,
    seeds: int,
    reps: int,
    effect: float,
    seed_noise: float,
    rng: np.random.Generator,
) -> float:
    """Fraction of simulated comparisons whose two-sided p is below ALPHA."""
    target, predictions = simulate_comparisons(kind, n, seeds, reps, effect, seed_noise, rng)
    return float(np.mean(primary_p_values(kind, target, predictions) < ALPHA))


def calibration(
    reps: int, seed: int, levels: dict[str, float] = SEED_NOISE
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for kind in ("regression", "binary"):
        for level, seed_noise in levels.items():
            for n in SUBJECTS:
                for seeds in SEEDS:
                    fpr = rejection_rate(kind, n, seeds, reps, 0.0, seed_noise, rng)
                    power = rejection_rate(kind, n, seeds, reps, EFFECT[kind], seed_noise, rng)
                    rows.append(
                        {
                            "task": kind,
                            "seed_noise": level,
                            "n_subjects": n,
                            "seeds_per_arm": seeds,
                            "false_positive_rate": fpr,
                            "power": power,
                        }
                    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4000, help="simulated comparisons per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks/results/decision_calibration.json"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    rows = calibration(args.reps, args.seed)
    result = {
        "alpha": ALPHA,
        "reps_per_cell": args.reps,
        "seed": args.seed,
        "seed_noise_sd": SEED_NOISE,
        "planted_effect": EFFECT,
        "rule": "jackknife pseudo-values, seed x subject random effects, Satterthwaite t",
        "seconds": round(time.perf_counter() - start, 1),
        "cells": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{'task':<11}{'seed noise':<11}{'n':>5}{'seeds':>6}{'FPR':>8}{'power':>8}")
    for row in rows:
        print(
            f"{row['task']:<11}{row['seed_noise']:<11}{row['n_subjects']:>5}"
            f"{row['seeds_per_arm']:>6}{row['false_positive_rate']:>8.3f}{row['power']:>8.3f}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
