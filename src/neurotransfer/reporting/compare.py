"""`neurotransfer compare`: does B beat A? One rule for seeds and subjects, as Markdown.

Each side (arm) is one revision or several; every fine-tuning seed of every revision of a side
(the ``prediction_seed<k>`` columns of its predictions, or its single ``prediction``) is one
seed of that arm. Subjects are paired across all of them. Per task and split the difference
B - A of each metric comes from `evaluation.decision`: jackknife pseudo-values, a seed x subject
random-effects variance, one Satterthwaite t interval and p-value. Each task kind has one
pre-declared primary metric (AUC, raw MAE); the primaries over tasks and splits are one family
whose p-values are adjusted for multiplicity (Holm, or Benjamini-Hochberg), and only they
decide. Every other metric is listed apart, as exploratory and unadjusted.

Thresholded binary metrics (balanced accuracy, sensitivity, ...) call each seed's subjects at
the threshold `evaluate` chose for that seed on validation, read from the same revision's
metrics (``seeds.seed<k>.threshold``), so compare scores what `evaluate` reported; 0.5 only
where an older run records none, noted once per arm. Without any variation in the data (e.g.
every seed of both arms perfect) a difference has no interval, and the table says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from neurotransfer.evaluation.decision import (
    ADJUST_METHODS,
    HIGHER_IS_BETTER,
    PRIMARY_METRIC,
    PSEUDO_VALUE_METRICS,
    SEEDS_KEY,
    adjust_pvalues,
    calls_at_thresholds,
    metric_difference,
)
from neurotransfer.evaluation.metrics import (
    DEFAULT_THRESHOLD,
    THRESHOLDED_METRICS,
    binary_metrics_unchecked,
    check_binary,
    check_regression,
    check_threshold,
    regression_metrics_unchecked,
)
from neurotransfer.evaluation.seeds import seed_key
from neurotransfer.reporting.revisions import ExperimentResults, seed_columns

EVAL_SPLITS = ("test", "ood_test")
SPLIT_LABELS = {"test": "ID (test)", "ood_test": "OOD (held-out sites)"}
# Exploratory metrics shown by default (every metric with pseudo-values is computed).
EXPLORATORY_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("balanced_accuracy", "brier"),
    "regression": ("rmse", "r"),
}
ADJUST_LABELS = {"holm": "Holm", "bh": "Benjamini-Hochberg"}


@dataclass
class Comparison:
    labels_a: list[str]
    labels_b: list[str]
    ci_level: float
    adjust: str
    # (task, split) -> {"n_subjects", "seeds_a", "seeds_b", "metrics": {name: entry}}; the
    # primary metric's entry also has "p_adjusted" and "primary": True.
    results: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. an arm's thresholds fell back to 0.5

    @property
    def alpha(self) -> float:
        return 1.0 - self.ci_level


class ArmSeed(NamedTuple):
    label: str
    rows: pd.DataFrame  # subject_id, _occurrence, target, prediction
    threshold: float | None  # validation-chosen cut of a binary task; None: none recorded


def recorded_threshold(metrics: Mapping[str, Any], seed: int | None) -> float | None:
    """The probability threshold `evaluate` chose on validation for `seed`.

    Read from a task's metrics JSON (``seeds.seed<k>.threshold``); a table with only a
    ``prediction`` column (`seed` None) takes that of the single seed recorded, if one is. None
    when the metrics record no threshold (runs from before thresholds were chosen).
    """
    records = metrics.get("seeds")
    if not isinstance(records, Mapping):
        return None
    if seed is None:
        record = next(iter(records.values())) if len(records) == 1 else None
    else:
        record = records.get(seed_key(seed))
    value = record.get("threshold") if isinstance(record, Mapping) else None
    if value is None:  # JSON null: NaN was written, i.e. no threshold
        return None
    threshold = float(value)
    check_threshold(threshold)  # a corrupt record must not silently change every call
    return threshold


def _arm_seeds(side: list[ExperimentResults], task: str, split: str) -> list[ArmSeed]:
    """One `ArmSeed` per seed of an arm's split, with its recorded threshold."""
    seeds = []
    for experiment in side:
        result = experiment.tasks[task]
        frame = result.predictions
        assert frame is not None, "read with predictions"
        rows = frame[frame["split"] == split]
        if rows.empty:
            return []
        keyed = rows.assign(_occurrence=rows.groupby("subject_id").cumcount())
        columns = seed_columns(rows, f"{experiment.label}: {task}")
        for seed, column in columns.items():
            label = f"{experiment.label}:seed{seed}" if seed is not None else experiment.label
            threshold = None
            if result.kind == "binary":
                try:
                    threshold = recorded_threshold(result.metrics, seed)
                except (TypeError, ValueError) as err:
                    raise ValueError(f"{label}: `{task}` records a bad threshold: {err}") from err
            seeds.append(
                ArmSeed(
                    label,
                    keyed[["subject_id", "_occurrence", "target"]].assign(
                        prediction=keyed[column].to_numpy()
                    ),
                    threshold,
                )
            )
    return seeds


def _cuts(seeds: list[ArmSeed]) -> np.ndarray:
    """Each seed's threshold, 0.5 where none is recorded (as `evaluate` did before choosing)."""
    return np.array(
        [DEFAULT_THRESHOLD if s.threshold is None else s.threshold for s in seeds], dtype=float
    )


def _aligned(
    seeds_a: list[ArmSeed], seeds_b: list[ArmSeed]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Target ``(n,)`` and predictions ``(s_A, n)``, ``(s_B, n)`` on the subjects all seeds share.

    A subject with several scans pairs scan by scan (first with first), as `align_predictions`.
    """
    keys = ["subject_id", "_occurrence"]
    merged = seeds_a[0].rows[[*keys, "target"]]
    for index, seed in enumerate([*seeds_a, *seeds_b]):
        merged = merged.merge(
            seed.rows[[*keys, "target", "prediction"]].rename(
                columns={"target": f"target_{index}", "prediction": f"prediction_{index}"}
            ),
            on=keys,
            validate="one_to_one",
        )
    if merged.empty:
        raise ValueError("the two sides share no subject: nothing to compare")
    for index in range(len(seeds_a) + len(seeds_b)):
        differs = ~np.isclose(merged["target"], merged[f"target_{index}"])
        if differs.any():
            raise ValueError(
                f"{int(differs.sum())} shared subject(s) have different targets in "
                f"{[*seeds_a, *seeds_b][index].label} (e.g. "
                f"{merged.loc[differs, 'subject_id'].head(3).tolist()}): not the same test data"
            )
    predictions = merged[[f"prediction_{i}" for i in range(len(seeds_a) + len(seeds_b))]]
    matrix = predictions.to_numpy(dtype=np.float64).T
    return merged["target"].to_numpy(np.float64), matrix[: len(seeds_a)], matrix[len(seeds_a) :]


def _mean_metric(kind: str, metric: str, target: np.ndarray, predictions: np.ndarray) -> float:
    """The plain metric averaged over an arm's seeds (what one fine-tuned model scores).

    `predictions` are `calls_at_thresholds` for a thresholded metric: 0/1 calls, which the
    default 0.5 cut keeps as they are.
    """
    score = binary_metrics_unchecked if kind == "binary" else regression_metrics_unchecked
    return float(np.mean([score(target, row)[metric] for row in predictions]))


def _compare_split(
    kind: str,
    target: np.ndarray,
    arm_a: np.ndarray,
    arm_b: np.ndarray,
    ci_level: float,
    cuts_a: np.ndarray | None = None,
    cuts_b: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Every metric's B - A; thresholded binary metrics at each seed's cut (`cuts_a`, `cuts_b`,
    one per seed; default 0.5)."""
    check = check_binary if kind == "binary" else check_regression
    for row in [*arm_a, *arm_b]:
        check(target, row)
    if cuts_a is None:
        cuts_a = np.full(len(arm_a), DEFAULT_THRESHOLD)
    if cuts_b is None:
        cuts_b = np.full(len(arm_b), DEFAULT_THRESHOLD)
    entries: dict[str, dict[str, Any]] = {}
    for metric in PSEUDO_VALUE_METRICS[kind]:
        # The same calls for the point estimates and the pseudo-values, as `evaluate` makes them.
        inputs_a = calls_at_thresholds(kind, metric, arm_a, cuts_a)
        inputs_b = calls_at_thresholds(kind, metric, arm_b, cuts_b)
        try:
            result = metric_difference(kind, metric, target, inputs_a, inputs_b, ci_level)
        except ValueError as err:
            if metric == PRIMARY_METRIC[kind] or "single fine-tuning seed" in str(err):
                raise
            continue  # an exploratory metric undefined here (e.g. one class below 2 subjects)
        if not math.isfinite(result.difference):
            continue
        entries[metric] = {
            "a": _mean_metric(kind, metric, target, inputs_a),
            "b": _mean_metric(kind, metric, target, inputs_b),
            "difference": result.difference,
            "ci_low": result.ci_low,
            "ci_high": result.ci_high,
            "p_value": result.p_value,
            "se": result.se,
            "df": result.df,
            "seed_sd": result.seed_sd,
            "note": result.note,  # why the interval (or p) is NaN, e.g. no variation at all
            "higher_is_better": metric in HIGHER_IS_BETTER,
            "primary": metric == PRIMARY_METRIC[kind],
        }
    return entries


def _threshold_notes(name: str, missing: dict[str, list[str]]) -> list[str]:
    """One line for an arm whose binary tasks' metrics record no threshold for some seeds."""
    # Each split lists the same seeds again: keep every label once, in order.
    unique = {task: list(dict.fromkeys(labels)) for task, labels in missing.items() if labels}
    if not unique:
        return []
    where = "; ".join(f"`{task}` ({', '.join(labels)})" for task, labels in unique.items())
    return [
        f"Arm {name}: no validation-chosen threshold recorded for {where} (a run from before "
        f"thresholds were chosen): their thresholded metrics ({', '.join(THRESHOLDED_METRICS)}) "
        f"cut probabilities at {DEFAULT_THRESHOLD:g}."
    ]


def compare_experiments(
    side_a: list[ExperimentResults],
    side_b: list[ExperimentResults],
    ci_level: float = 0.95,
    adjust: str = "holm",
    splits: tuple[str, ...] = EVAL_SPLITS,
) -> Comparison:
    """B - A for every task and split that every revision of both sides evaluated.

    Raises ValueError when an arm has a single fine-tuning seed (training noise cannot be
    estimated), when the sides score different targets for a subject, or on a bad `adjust`.
    """
    if not side_a or not side_b:
        raise ValueError("each side needs at least one revision")
    if adjust not in ADJUST_METHODS:
        raise ValueError(f"unknown --adjust {adjust!r}; expected one of {list(ADJUST_METHODS)}")
    if not 0.0 < ci_level < 1.0:
        raise ValueError(f"ci_level must lie strictly between 0 and 1, got {ci_level}")
    comparison = Comparison(
        labels_a=[e.label for e in side_a],
        labels_b=[e.label for e in side_b],
        ci_level=ci_level,
        adjust=adjust,
    )
    everyone = [*side_a, *side_b]
    # Per arm, {task: seed labels without a recorded threshold}, for one note line per arm.
    no_threshold: dict[str, dict[str, list[str]]] = {"A": {}, "B": {}}
    for task in sorted(set().union(*(e.tasks for e in everyone))):
        missing = [e.label for e in everyone if task not in e.tasks]
        if missing:
            comparison.skipped.append(f"`{task}`: not evaluated at {', '.join(missing)}")
            continue
        kinds = {e.tasks[task].kind for e in everyone}
        if len(kinds) > 1:
            comparison.skipped.append(f"`{task}`: task kind differs between revisions {kinds}")
            continue
        kind = kinds.pop()
        comparison.kinds[task] = kind
        for split in splits:
            seeds_a, seeds_b = _arm_seeds(side_a, task, split), _arm_seeds(side_b, task, split)
            if not seeds_a or not seeds_b:
                comparison.skipped.append(f"`{task}` / {split}: no subjects in some revision")
                continue
            for name, seeds in (("A", seeds_a), ("B", seeds_b)):
                if len(seeds) < 2:
                    raise ValueError(
                        f"arm {name} ({seeds[0].label}) has a single fine-tuning seed for "
                        f"`{task}`: training noise cannot be estimated from one seed, and "
                        f"without it two seeds of the same configuration come out "
                        f"'significantly' different. "
                        f"Train several seeds (set `{SEEDS_KEY}`, e.g. [0, 1, 2]) or pass one "
                        f"revision per seed (rev1,rev2,rev3)"
                    )
                if kind == "binary":
                    unrecorded = no_threshold[name].setdefault(task, [])
                    unrecorded += [s.label for s in seeds if s.threshold is None]
            target, arm_a, arm_b = _aligned(seeds_a, seeds_b)
            comparison.results[(task, split)] = {
                "n_subjects": int(target.size),
                "seeds_a": [s.label for s in seeds_a],
                "seeds_b": [s.label for s in seeds_b],
                "metrics": _compare_split(
                    kind, target, arm_a, arm_b, ci_level, _cuts(seeds_a), _cuts(seeds_b)
                ),
            }
    primaries = [
        result["metrics"][PRIMARY_METRIC[comparison.kinds[task]]]
        for (task, _), result in comparison.results.items()
    ]
    # An untestable primary (NaN p: no variation at all) is left out of the family and keeps a
    # NaN adjusted p; the Markdown says how many were left out.
    adjusted = adjust_pvalues([entry["p_value"] for entry in primaries], adjust)
    for entry, p_adjusted in zip(primaries, adjusted, strict=True):
        entry["p_adjusted"] = float(p_adjusted)
    comparison.notes += _threshold_notes("A", no_threshold["A"])
    comparison.notes += _threshold_notes("B", no_threshold["B"])
    return comparison


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _signed(value: float, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def _p(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _interval(entry: dict[str, Any]) -> str:
    """The interval cell, or the note saying why there is none (never a zero-width interval)."""
    if entry.get("note"):
        return entry["note"]
    return f"[{_signed(entry['ci_low'])}, {_signed(entry['ci_high'])}]"


def _better_side(entry: dict[str, Any]) -> str:
    b_larger = entry["difference"] > 0.0
    return "B" if b_larger == entry["higher_is_better"] else "A"


def decision(entry: dict[str, Any], alpha: float) -> str:
    """The primary decision: the better side when the adjusted p is below alpha, else "–"."""
    p_adjusted = entry.get("p_adjusted", float("nan"))
    if not math.isfinite(p_adjusted) or p_adjusted >= alpha:
        return "–"
    return _better_side(entry)


def _metric_cells(task: str, split: str, name: str, entry: dict[str, Any]) -> str:
    """The cells both tables start a row with: task, split, metric, A, B, Δ, interval, p."""
    return (
        f"| {task} | {SPLIT_LABELS.get(split, split)} | {name} | {_fmt(entry['a'])} "
        f"| {_fmt(entry['b'])} | {_signed(entry['difference'])} "
        f"| {_interval(entry)} | {_p(entry['p_value'])} "
    )


def _rule_lines(comparison: Comparison, level: str, adjust: str) -> list[str]:
    """The heading, the two arms and the rule that decides (with the size of its family)."""
    a = ", ".join(f"`{x}`" for x in comparison.labels_a)
    b = ", ".join(f"`{x}`" for x in comparison.labels_b)
    primary_p = [
        r["metrics"][PRIMARY_METRIC[comparison.kinds[t]]]["p_value"]
        for (t, _), r in comparison.results.items()
    ]
    n_primary = sum(math.isfinite(p) for p in primary_p)
    untestable = len(primary_p) - n_primary
    left_out = (
        f" ({untestable} without a p-value, having no variation to test against, "
        f"{'is' if untestable == 1 else 'are'} left out of the family)"
        if untestable
        else ""
    )
    return [
        "## Paired comparison",
        "",
        f"A = {a}  ",
        f"B = {b}",
        "",
        f"Δ = B − A on the subjects every seed of both sides scored. Every fine-tuning seed is "
        f"one seed of its arm; per-subject jackknife pseudo-values of each metric, a seed × "
        f"subject random-effects variance (seed noise and subject sampling, subjects paired), "
        f"and from the same (Δ, SE, Satterthwaite df): a {level} t interval and a two-sided "
        f"p-value. One primary metric per task (AUC; raw MAE for regression); the "
        f"{n_primary} primary tests (tasks × splits) are adjusted together ({adjust})"
        f"{left_out}. Thresholded metrics call each seed at its own validation-chosen "
        f"threshold, as `evaluate` does. Without any variation across seeds or subjects there "
        f"is no interval (the table says so). *Decision*: the better side when the adjusted "
        f"p < {comparison.alpha:g}, else –.",
    ]


def _primary_table(comparison: Comparison, level: str, adjust: str) -> list[str]:
    """One row per task and split: the primary metric, its adjusted p and the decision."""
    lines = [
        "### Primary (decides)",
        "",
        f"| task | split | metric | A | B | Δ (B − A) | {level} CI | p | p ({adjust}) "
        f"| decision | seeds A / B | n |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, split), result in comparison.results.items():
        name = PRIMARY_METRIC[comparison.kinds[task]]
        e = result["metrics"][name]
        lines.append(
            _metric_cells(task, split, name, e)
            + f"| {_p(e['p_adjusted'])} | {decision(e, comparison.alpha)} "
            f"| {len(result['seeds_a'])} / {len(result['seeds_b'])} "
            f"| {result['n_subjects']} |"
        )
    if not comparison.results:
        lines.append("| – | – | no task and split evaluated on both sides | | | | | | | | | |")
    return lines


def _exploratory_table(
    comparison: Comparison, exploratory: dict[str, tuple[str, ...]], level: str
) -> list[str]:
    """The `exploratory` metrics computed for each task and split (none: no table)."""
    rows = [
        (task, split, name, result["metrics"][name])
        for (task, split), result in comparison.results.items()
        for name in exploratory.get(comparison.kinds[task], ())
        if name in result["metrics"]
    ]
    if not rows:
        return []
    return [
        "### Exploratory (unadjusted p-values; not a decision)",
        "",
        f"| task | split | metric | A | B | Δ (B − A) | {level} CI | p (unadjusted) |",
        "|---|---|---|---|---|---|---|---|",
        *(_metric_cells(task, split, name, e) + "|" for task, split, name, e in rows),
    ]


def _closing_lines(comparison: Comparison) -> list[str]:
    """The seeds of each arm, the notes and what was not compared, each after a blank line."""
    lines: list[str] = []
    if comparison.results:
        first = next(iter(comparison.results.values()))
        lines += [
            "",
            f"Seeds: A {len(first['seeds_a'])} ({', '.join(first['seeds_a'])}); "
            f"B {len(first['seeds_b'])} ({', '.join(first['seeds_b'])}).",
        ]
    if comparison.notes:
        lines += ["", *comparison.notes]
    if comparison.skipped:
        lines += ["", "Not compared:", *(f"- {reason}" for reason in comparison.skipped)]
    return lines


def comparison_markdown(
    comparison: Comparison, exploratory: dict[str, tuple[str, ...]] | None = None
) -> str:
    """The comparison as Markdown: the rule, the primary table (the decision), exploratory."""
    exploratory = EXPLORATORY_METRICS if exploratory is None else exploratory
    level = f"{100 * comparison.ci_level:g}%"
    adjust = ADJUST_LABELS[comparison.adjust]
    lines = [
        *_rule_lines(comparison, level, adjust),
        "",
        *_primary_table(comparison, level, adjust),
    ]
    if exploratory_lines := _exploratory_table(comparison, exploratory, level):
        lines += ["", *exploratory_lines]
    lines += _closing_lines(comparison)
    return "\n".join(lines) + "\n"
