"""Metrics over fine-tuning seeds (`evaluation.seeds`) and the validation-chosen threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neurotransfer.evaluation.bootstrap import evaluate_predictions
from neurotransfer.evaluation.metrics import binary_metrics, choose_threshold
from neurotransfer.evaluation.seeds import evaluate_seed_predictions, seed_metric_estimates


def test_the_threshold_separates_probabilities_that_all_lie_below_one_half() -> None:
    # The default AD model's case: every probability in 0.435-0.457, so at 0.5 nobody is
    # called positive and balanced accuracy is exactly 0.5.
    target = np.repeat([0.0, 1.0], 9)
    score = np.r_[np.linspace(0.435, 0.444, 9), np.linspace(0.446, 0.457, 9)]
    assert binary_metrics(target, score)["balanced_accuracy"] == 0.5
    choice = choose_threshold(target, score)
    assert 0.444 < choice.threshold < 0.446
    assert choice.youden_j == pytest.approx(1.0)
    assert binary_metrics(target, score, choice.threshold)["balanced_accuracy"] == 1.0


def test_ties_go_to_the_threshold_closest_to_one_half() -> None:
    target = np.array([0.0, 0.0, 1.0, 1.0])
    # Every cut between 0.2 and 0.8 separates the classes: 0.5 is among them and is kept.
    assert choose_threshold(target, [0.1, 0.2, 0.8, 0.9]).threshold == 0.5
    # Two equally good cuts (J = 2/3 each), at 0.3 and 0.75: the one nearer 0.5 wins.
    target = np.array([0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    assert choose_threshold(target, [0.1, 0.2, 0.4, 0.7, 0.8, 0.9]).threshold == pytest.approx(0.3)


def test_one_class_in_validation_keeps_one_half_and_says_why() -> None:
    choice = choose_threshold([1.0, 1.0, 1.0], [0.2, 0.6, 0.9])
    assert choice.threshold == 0.5
    assert "only positive" in choice.fallback_reason


def seed_predictions(seed_shifts: list[float], n: int = 60) -> pd.DataFrame:
    """Brain-age predictions of one seed per shift: the same subject errors, moved by the
    seed's shift (seeds that disagree on average, as trained networks do)."""
    rng = np.random.default_rng(0)
    age = rng.uniform(20, 80, n)
    error = rng.normal(0.0, 5.0, n)
    frame = pd.DataFrame(
        {"subject_id": [f"s{i}" for i in range(n)], "site": "A", "split": "test", "target": age}
    )
    seed_noise = np.random.default_rng(1)
    for value, shift in enumerate(seed_shifts):
        frame[f"prediction_seed{value}"] = age + error + shift + seed_noise.normal(0, 1.0, n)
    return frame


def test_the_headline_is_the_mean_over_seeds_and_its_interval_carries_their_spread() -> None:
    frame = seed_predictions([-4.0, 0.0, 4.0])
    estimates, per_seed = seed_metric_estimates(frame, "regression", [0, 1, 2])
    mean_error = estimates["mean_error"]
    values = [per_seed[s]["mean_error"] for s in (0, 1, 2)]
    assert mean_error["value"] == pytest.approx(np.mean(values))
    assert mean_error["seed_sd"] == pytest.approx(np.std(values, ddof=1))
    assert mean_error["ci_low"] < mean_error["value"] < mean_error["ci_high"]
    # One seed alone: subjects only. Three seeds that disagree: a wider interval.
    alone, _ = seed_metric_estimates(frame, "regression", [1])
    assert alone["mean_error"]["seed_sd"] == 0.0
    width = mean_error["ci_high"] - mean_error["ci_low"]
    assert width > 1.5 * (alone["mean_error"]["ci_high"] - alone["mean_error"]["ci_low"])
    # Seeds that agree add (almost) nothing to the subject-only interval.
    agreeing, _ = seed_metric_estimates(seed_predictions([0.0, 0.0, 0.0]), "regression", [0, 1, 2])
    agreeing_width = agreeing["mean_error"]["ci_high"] - agreeing["mean_error"]["ci_low"]
    assert agreeing_width < width / 1.5


def test_per_seed_thresholds_are_applied_and_sites_without_a_class_get_no_interval() -> None:
    rng = np.random.default_rng(2)
    n = 40
    target = np.tile([0.0, 1.0], n // 2)
    frame = pd.DataFrame(
        {
            "subject_id": [f"s{i}" for i in range(n)],
            "site": ["A"] * 30 + ["B"] * 10,
            "split": "test",
            "target": target,
        }
    )
    frame.loc[frame["site"] == "B", "target"] = 0.0  # site B: controls only
    for value in (0, 1):
        frame[f"prediction_seed{value}"] = np.clip(
            0.4 + 0.1 * frame["target"] + rng.normal(0, 0.03, n), 0, 1
        )
    thresholds = {0: 0.45, 1: 0.5}
    evaluation, per_seed = evaluate_seed_predictions(frame, "binary", [0, 1], thresholds)
    for value, cut in thresholds.items():
        expected = binary_metrics(frame["target"], frame[f"prediction_seed{value}"], cut)
        assert per_seed[value]["test"]["balanced_accuracy"] == pytest.approx(
            expected["balanced_accuracy"]
        )
    table = evaluation["test"]
    assert table["n_seeds"] == 2
    assert "seed x subject" in table["interval"]
    site_b = table["per_site"]["B"]
    assert "only negative" in site_b["note"]
    assert site_b["metrics"]["auc"]["value"] is not None and np.isnan(
        site_b["metrics"]["auc"]["value"]
    )
    assert np.isnan(site_b["metrics"]["auc"]["ci_low"])
    brier = site_b["metrics"]["brier"]  # defined with one class: it keeps its interval
    assert brier["ci_low"] <= brier["value"] <= brier["ci_high"]


def test_the_baselines_bootstrap_table_applies_the_threshold_it_is_given() -> None:
    target = np.repeat([0.0, 1.0], 10)
    score = np.r_[np.full(10, 0.40), np.full(10, 0.46)]
    frame = pd.DataFrame(
        {"subject_id": [f"s{i}" for i in range(20)], "site": "A", "split": "test"}
    ).assign(target=target, prediction=score)
    at_half = evaluate_predictions(frame, "binary", 20, 0.95, 0)
    chosen = evaluate_predictions(frame, "binary", 20, 0.95, 0, threshold=0.43)
    assert at_half["test"]["metrics"]["balanced_accuracy"]["value"] == 0.5
    assert chosen["test"]["metrics"]["balanced_accuracy"]["value"] == 1.0
    assert chosen["test"]["per_site"]["A"]["metrics"]["sensitivity"]["value"] == 1.0
