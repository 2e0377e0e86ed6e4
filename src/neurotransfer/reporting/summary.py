"""``reports/summary.md``: the study table, data-scaling curves, QC and synthetic montages.

One row per variant and task, with the headline metric in distribution (``test``) and on
held-out sites (``ood_test``), each with its bootstrap interval. Within one experiment the
variants are its model (architecture + initialisation) and the two baselines scored on the same
subjects; given several revisions (``neurotransfer report --revs``) every experiment's model is
a variant, which is the study's grid of initialisations.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurotransfer.atomic import SKIPPED_NOTE
from neurotransfer.evaluation.decision import PRIMARY_METRIC
from neurotransfer.reporting.revisions import ExperimentResults

# The study table shows each task's pre-declared primary metric (the one `compare` decides on:
# AUC; raw MAE for regression), the same key for the model and every baseline.
SPLITS = (("test", "ID (test)"), ("ood_test", "OOD (held-out sites)"))
IMAGE_SUFFIXES = (".png", ".svg", ".jpg")


def _interval(entry: dict[str, Any] | float | None) -> str:
    """``value [low, high]`` from a bootstrap entry, or the bare value of a point metric."""
    if entry is None:
        return "–"
    if not isinstance(entry, dict):
        return "–" if not math.isfinite(entry) else f"{entry:.3f}"
    value, low, high = entry.get("value"), entry.get("ci_low"), entry.get("ci_high")
    if value is None or not math.isfinite(value):
        return "–"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _headline(metrics: dict[str, Any], split: str, name: str) -> Any:
    """Metric `name` on `split`, or None (shown as "–"): never another metric in its place."""
    table = metrics.get(split, {})
    values = table.get("metrics", table)  # point-only baselines have no "metrics" level
    return values.get(name)


def study_rows(experiments: list[ExperimentResults], baselines: bool) -> list[list[str]]:
    rows = []
    for experiment in experiments:
        for task, result in sorted(experiment.tasks.items()):
            metric = PRIMARY_METRIC[result.kind]
            m = result.metrics
            variant = f"{m.get('model', '?')} / {m.get('init', '?')}"
            if len(experiments) > 1:
                variant = f"`{experiment.label}`: {variant}"
            candidates = [(variant, m.get("model_metrics", {}))]
            if baselines:
                for name, table in m.get("baselines", {}).items():
                    candidates.append((f"baseline: {name}", table))
            for label, table in candidates:
                rows.append(
                    [
                        label,
                        task,
                        metric,
                        *(_interval(_headline(table, s, metric)) for s, _ in SPLITS),
                    ]
                )
    return rows


def _images(root: Path, folder: str) -> list[str]:
    path = root / folder
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _curve_cell(rows: pd.DataFrame) -> str:
    """One seed: value [interval]; several: mean ± sd over seeds."""
    values = rows["value"].to_numpy(dtype=float)
    if values.size == 0 or not np.isfinite(values).any():
        return "–"
    if values.size == 1:
        return _interval(rows.iloc[0][["value", "ci_low", "ci_high"]].astype(float).to_dict())
    return f"{np.nanmean(values):.3f} ± {np.nanstd(values, ddof=1):.3f} ({values.size} seeds)"


def scaling_lines(root: Path, folder: str, report_dir: str = "reports") -> list[str]:
    """The data-scaling section: a table per task from ``<folder>/<task>.csv`` and its plot."""
    lines = ["", "## Data scaling", ""]
    path = root / folder
    curves = sorted(path.glob("*.csv")) if path.is_dir() else []
    if not curves:
        lines.append(
            f"No data-scaling curves in `{folder}/` (the `scaling` stage is off or has not run)."
        )
        return lines
    lines += [
        "The fine-tuning recipe on nested, stratified fractions of each task's training subjects "
        "(the same initial backbone, validation and test subjects at every fraction). One seed: "
        "value [bootstrap interval]; several: mean ± sd over seeds.",
        "",
    ]
    prefix = Path(folder).relative_to(report_dir) if folder.startswith(report_dir) else Path(folder)
    for csv in curves:
        curve = pd.read_csv(csv)
        task = csv.stem
        metric = str(curve["metric"].iloc[0]) if len(curve) else "?"
        lines += [
            f"### {task} ({metric})",
            "",
            "| fraction | training subjects | " + " | ".join(label for _, label in SPLITS) + " |",
            "|---|---|" + "---|" * len(SPLITS),
        ]
        for fraction, rows in curve.groupby("fraction", sort=True):
            cells = [_curve_cell(rows[rows["split"] == split]) for split, _ in SPLITS]
            n_train = int(rows["n_train"].max())
            lines.append(f"| {float(fraction):g} | {n_train} | " + " | ".join(cells) + " |")
        plot = csv.with_suffix(".png")
        if plot.is_file():
            lines += ["", f"![{task} data scaling]({(prefix / plot.name).as_posix()})"]
        lines.append("")
    return lines


def summary_markdown(
    experiments: list[ExperimentResults],
    root: Path,
    image_dirs: dict[str, str],
    ci_level: float,
    report_dir: str = "reports",
    scaling_dir: str | None = None,
) -> str:
    """The whole summary; image links are relative to `report_dir` (where the file lives)."""
    level = f"{100 * ci_level:g}%"
    lines = [
        "# neurotransfer study summary",
        "",
        "## Study table",
        "",
        f"Each task's pre-declared primary metric (AUC for binary tasks, higher is better; raw "
        f"MAE in years for regression, lower is better; the bias-corrected MAE is in "
        f"`metrics/eval/<task>.json`) with its {level} interval (the model: over seeds and "
        f"subjects; the baselines: subjects), in distribution and on held-out sites. Baselines "
        f"are scored on the same subjects (the mean predictor has no interval). `neurotransfer "
        f"compare` tests differences between variants on paired subjects.",
        "",
        "| variant | task | metric | ID (test) | OOD (held-out sites) |",
        "|---|---|---|---|---|",
    ]
    rows = study_rows(experiments, baselines=len(experiments) == 1)
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if not rows:
        lines.append("| – | no evaluated task | | | |")
    if scaling_dir is not None:
        lines += scaling_lines(root, scaling_dir, report_dir)
    for title, folder in image_dirs.items():
        lines += ["", f"## {title}", ""]
        images = _images(root, folder)
        skipped = root / folder / SKIPPED_NOTE
        if not images and skipped.is_file():
            # the stage ran and chose not to make figures (synthesize.when=needed): say why
            lines.append(skipped.read_text(encoding="utf-8").strip())
            continue
        if not images:
            lines.append(f"No figures in `{folder}/` (the stage that writes them has not run).")
            continue
        prefix = Path(folder).relative_to(report_dir) if folder.startswith(report_dir) else folder
        for name in images:
            lines += [f"### {name}", "", f"![{name}]({Path(prefix, name).as_posix()})", ""]
    return "\n".join(lines).rstrip() + "\n"
