"""DVC stage `finetune@<task>`: fine-tune the backbone on one downstream task."""

from __future__ import annotations

import argparse
from pathlib import Path

from neurotransfer.config import Settings
from neurotransfer.paths import finetune_metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="task name from params.yaml `tasks`")


def run(settings: Settings, args: argparse.Namespace) -> None:
    from neurotransfer.atomic import write_json_atomic
    from neurotransfer.train.finetune import run_finetune, task_settings

    task_settings(settings, args.task)  # fail before any heavy import on an unknown task
    metrics = run_finetune(settings, args.task, Path("."))
    if metrics is None:  # a DDP process other than global zero: rank 0 writes
        return
    write_json_atomic(finetune_metrics(args.task), metrics)
