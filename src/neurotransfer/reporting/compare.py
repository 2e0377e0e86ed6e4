"""`neurotransfer compare`: paired differences between two experiments, as Markdown.

Each side is one revision or several (one per seed). With one revision per side the table gives
the paired bootstrap difference B - A with its interval and p-value (and DeLong's p for AUC).
With k revisions per side the i-th of A is paired with the i-th of B, and the table gives mean
± sd over the k pairs of A, B and the difference, and how many pairs' intervals exclude 0: seed
variation is often as large as the effect of an initialisation, and a single pair hides it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from neurotransfer.evaluation.paired import DEFAULT_METRICS, paired_bootstrap
from neurotransfer.reporting.revisions import ExperimentResults

EVAL_SPLITS = ("test", "ood_test")
SPLIT_LABELS = {"test": "ID (test)", "ood_test": "OOD (held-out sites)"}


@dataclass
class Comparison:
    labels_a: list[str]
    labels_b: list[str]
    n_resamples: int
    ci_level: float
    # (task, split) -> one paired_bootstrap result per seed pair
    results: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def compare_experiments(
    side_a: list[ExperimentResults],
    side_b: list[ExperimentResults],
    n_resamples: int = 2000,
    ci_level: float = 0.95,
    seed: int = 0,
    splits: tuple[str, ...] = EVAL_SPLITS,
) -> Comparison:
    """Paired bootstrap of every task and split that both sides of every pair evaluated."""
    if len(side_a) != len(side_b) or not side_a:
        raise ValueError(
            f"each side needs the same number of revisions (one per seed): got {len(side_a)} "
            f"and {len(side_b)}"
        )
    comparison = Comparison(
        labels_a=[e.label for e in side_a],
        labels_b=[e.label for e in side_b],
        n_resamples=n_resamples,
        ci_level=ci_level,
    )
    all_tasks = sorted(set().union(*(e.tasks for e in [*side_a, *side_b])))
    for task in all_tasks:
        missing = [e.label for e in [*side_a, *side_b] if task not in e.tasks]
        if missing:
            comparison.skipped.append(f"`{task}`: not evaluated at {', '.join(missing)}")
            continue
        kinds = {e.tasks[task].kind for e in [*side_a, *side_b]}
        if len(kinds) > 1:
            comparison.skipped.append(f"`{task}`: task kind differs between revisions {kinds}")
            continue
        kind = kinds.pop()
        comparison.kinds[task] = kind
        for split in splits:
            pair_results = []
            for a, b in zip(side_a, side_b, strict=True):
                pa, pb = a.tasks[task].predictions, b.tasks[task].predictions
                assert pa is not None and pb is not None, "read with predictions"
                rows_a, rows_b = pa[pa["split"] == split], pb[pb["split"] == split]
                if rows_a.empty or rows_b.empty:
                    break
                pair_results.append(
                    paired_bootstrap(rows_a, rows_b, kind, n_resamples, ci_level, seed)
                )
            if len(pair_results) == len(side_a):
                comparison.results[(task, split)] = pair_results
            else:
                comparison.skipped.append(f"`{task}` / {split}: no subjects in some revision")
    return comparison


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _signed(value: float, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def _p(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _favours(entry: dict[str, Any]) -> str:
    """Which side the interval favours, or – when it contains 0."""
    low, high = entry["ci_low"], entry["ci_high"]
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0.0 <= high:
        return "–"
    b_larger = low > 0.0
    return "B" if b_larger == entry["higher_is_better"] else "A"


def _mean_sd(values: list[float], signed: bool = False) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "–"
    sd = statistics.stdev(finite) if len(finite) > 1 else float("nan")
    mean = _signed(statistics.fmean(finite)) if signed else _fmt(statistics.fmean(finite))
    return f"{mean} ± {_fmt(sd)}"


def comparison_markdown(
    comparison: Comparison, metrics: dict[str, tuple[str, ...]] | None = None
) -> str:
    """The comparison as one Markdown table (plus a header saying what was compared)."""
    metrics = metrics or DEFAULT_METRICS
    level = f"{100 * comparison.ci_level:g}%"
    multi = len(comparison.labels_a) > 1
    a = ", ".join(f"`{x}`" for x in comparison.labels_a)
    b = ", ".join(f"`{x}`" for x in comparison.labels_b)
    lines = [
        "## Paired comparison",
        "",
        f"A = {a}  ",
        f"B = {b}",
        "",
        f"Δ = B − A on the subjects both evaluated; paired subject-level bootstrap "
        f"({comparison.n_resamples} resamples, class-stratified for binary tasks), {level} "
        f"percentile interval, two-sided p from the null-centred bootstrap; DeLong's test for "
        f"AUC. *Favours*: the side the interval supports (– when it contains 0).",
        "",
    ]
    if multi:
        lines += [
            f"{len(comparison.labels_a)} seed pairs (i-th of A with i-th of B): mean ± sd over "
            f"pairs; *CI excl. 0* counts the pairs whose {level} interval excludes 0.",
            "",
            "| task | split | metric | A | B | Δ (B − A) | CI excl. 0 | n |",
            "|---|---|---|---|---|---|---|---|",
        ]
    else:
        lines += [
            f"| task | split | metric | A | B | Δ (B − A) | {level} CI | p (bootstrap) "
            f"| p (DeLong) | favours | n |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for (task, split), pairs in comparison.results.items():
        for name in metrics.get(comparison.kinds[task], ()):
            entries = [p["metrics"][name] for p in pairs if name in p["metrics"]]
            if len(entries) != len(pairs):
                continue
            n = pairs[0]["n_subjects"]
            head = f"| {task} | {SPLIT_LABELS.get(split, split)} | {name} "
            if multi:
                excl = sum(_favours(e) != "–" for e in entries)
                lines.append(
                    head + f"| {_mean_sd([e['a'] for e in entries])} "
                    f"| {_mean_sd([e['b'] for e in entries])} "
                    f"| {_mean_sd([e['difference'] for e in entries], signed=True)} "
                    f"| {excl}/{len(entries)} | {n} |"
                )
            else:
                e = entries[0]
                lines.append(
                    head + f"| {_fmt(e['a'])} | {_fmt(e['b'])} | {_signed(e['difference'])} "
                    f"| [{_signed(e['ci_low'])}, {_signed(e['ci_high'])}] | {_p(e['p_value'])} "
                    f"| {_p(e.get('delong_p_value', float('nan')))} | {_favours(e)} | {n} |"
                )
    if not comparison.results:
        lines.append("| – | – | no task and split evaluated on both sides | | | | | |")
    if comparison.skipped:
        lines += ["", "Not compared:", *(f"- {reason}" for reason in comparison.skipped)]
    return "\n".join(lines) + "\n"
