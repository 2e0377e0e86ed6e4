"""DVC stage `evaluate@<task>`: ID/OOD metrics with CIs, baselines, site probe, plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from neurotransfer.config import Settings
from neurotransfer.paths import eval_metrics, eval_report_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="task name from params.yaml `tasks`")


def run(settings: Settings, args: argparse.Namespace) -> None:
    from neurotransfer.atomic import atomic_directory, write_json_atomic
    from neurotransfer.evaluation import plot_tables, save_figures
    from neurotransfer.evaluation.run import evaluate_task
    from neurotransfer.runtime import json_ready
    from neurotransfer.train.finetune import task_settings

    task = task_settings(settings, args.task)
    result = evaluate_task(settings, args.task, Path("."))

    # Reports are written to a temporary sibling and renamed into place as a whole.
    with atomic_directory(eval_report_dir(args.task)) as tmp:
        result.predictions.to_csv(tmp / "predictions.csv", index=False)
        scored = result.predictions[result.predictions["split"].isin(["test", "ood_test"])]
        for plot, per_split in plot_tables(scored, task.kind).items():
            for split, table in per_split.items():
                if plot == "roc":
                    table = table[["fpr", "tpr"]]  # the first threshold is +inf
                table.to_csv(tmp / f"{plot}_{split}.csv", index=False)
        save_figures(scored, task.kind, tmp)
    write_json_atomic(eval_metrics(args.task), json_ready(result.metrics))
