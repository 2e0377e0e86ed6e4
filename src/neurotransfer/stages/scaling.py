"""DVC stage `scaling`: data-scaling curves (metric vs training subjects) per task.

Writes ``reports/scaling/<task>.csv`` (one row per fraction, seed and split: n_train,
fraction, seed, split, metric, value, ci_low, ci_high), ``reports/scaling/<task>.png`` and
``metrics/scaling.json``. With ``scaling.enabled: false`` it writes a note instead of curves.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from neurotransfer.config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task",
        action="append",
        default=None,
        help="only this task (repeatable; default: "
        "scaling.tasks, or every task when that is empty)",
    )


def run(settings: Settings, args: argparse.Namespace) -> None:
    from neurotransfer.atomic import write_json_atomic, write_text_atomic
    from neurotransfer.config import SettingsError
    from neurotransfer.runtime import json_ready
    from neurotransfer.train.scaling import plot_curve, run_scaling_task, scaling_summary

    sc = settings.scaling
    out_dir, metrics_path = Path(sc.out_dir), Path(sc.metrics_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not sc.enabled:
        write_text_atomic(
            out_dir / "README.md", "Data-scaling curves are off (`scaling.enabled: false`).\n"
        )
        write_json_atomic(metrics_path, {"enabled": False})
        return
    tasks = args.task or sc.tasks or list(settings.tasks)
    unknown = sorted(set(tasks) - set(settings.tasks))
    if unknown:
        raise SettingsError(f"unknown task(s) {unknown}; tasks: {sorted(settings.tasks)}")
    curves = {}
    for task in tasks:
        curve = run_scaling_task(settings, task, Path("."))
        curves[task] = curve
        write_text_atomic(out_dir / f"{task}.csv", curve.to_csv(index=False))
        plot_curve(curve, out_dir / f"{task}.png")
    write_json_atomic(metrics_path, json_ready({"enabled": True, **scaling_summary(curves)}))
