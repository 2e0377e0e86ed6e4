"""DVC stage `finetune@<task>`: fine-tune the backbone on one downstream task.

Trains the recipe of ``neurotransfer.train.finetune`` (`train_task`) once per fine-tuning seed
(``finetune.seeds``; each seed a single network or a deep ensemble), in every cross-validation
fold with ``data.splits.mode: kfold``, one after another or side by side in forked one-thread
processes (``finetune.seed_processes``). Once the last has trained, writes them all together to
``models/finetuned/<task>/`` (layout: ``train.checkpoint``) and the run's figures to
``metrics/finetune/<task>.json``. The first seed logs to ``dvclive/finetune/<task>/``, the
others beneath it (`model_log_dir`).

The CLI imports this module to build its parser, so numpy, torch and ``neurotransfer.train`` are
imported inside the functions that use them: ``neurotransfer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import platform
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neurotransfer.atomic import write_json_atomic
from neurotransfer.config import Settings
from neurotransfer.paths import finetune_log_dir, finetune_metrics, finetuned_dir
from neurotransfer.process_guard import die_with_parent

if TYPE_CHECKING:
    from neurotransfer.train.finetune import TrainedTask

log = logging.getLogger(__name__)

# Seeds after the first log in <task's dvclive folder>/seeds/seed<k>/, ensemble members m > 0
# of a seed in <that seed's folder>/members/<m>/, cross-validation folds f > 0 in
# folds/fold<f>/ (each laid out like the task's folder).
SEED_LOGS = "seeds"
MEMBER_LOGS = "members"
FOLD_LOGS = "folds"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="task name from params.yaml `tasks`")


def run(settings: Settings, args: argparse.Namespace) -> None:
    metrics = run_finetune(settings, args.task, Path("."))
    if metrics is None:  # a DDP process other than global zero: rank 0 writes
        return
    write_json_atomic(finetune_metrics(args.task), metrics)


def model_log_dir(
    root: Path,
    task_name: str,
    seed_index: int,
    seed_value: int,
    member: int = 0,
    fold: int | None = None,
) -> Path:
    """dvclive folder of one trained network: the first seed (index 0) logs where ``dvc.yaml``
    declares, seed index i > 0 in ``seeds/seed<value>/`` beneath it; within a seed, ensemble
    member 0 logs in the seed's folder and member m > 0 in ``members/<m>/`` beneath that.
    Cross-validation folds f > 0 have the same layout under ``folds/fold<f>/``."""
    from neurotransfer.train.checkpoint import fold_dir, seed_dir

    folder = finetune_log_dir(task_name, root)
    if fold:
        folder = folder / FOLD_LOGS / fold_dir(fold)
    if seed_index > 0:
        folder = folder / SEED_LOGS / seed_dir(seed_value)
    return folder if member == 0 else folder / MEMBER_LOGS / str(member)


@dataclass
class SeedRun:
    """The network(s) trained with one seed value: one model, or an ensemble's members."""

    seed: int
    member_seeds: list[int]
    members: list[TrainedTask]

    @property
    def best_score(self) -> float:
        """The members' mean validation score (the single model's for one member)."""
        import numpy as np

        return float(np.mean([m.result.best_score for m in self.members]))

    def member_records(self) -> list[dict[str, Any]]:
        from neurotransfer.train.checkpoint import member_file

        return [
            {
                "seed": member_seed,
                "file": member_file(index),
                "best_epoch": trained.result.best_epoch,
                "best_score": trained.result.best_score,
                "epochs_run": trained.result.epochs_run,
                "train_seconds": round(trained.result.seconds, 2),
            }
            for index, (member_seed, trained) in enumerate(
                zip(self.member_seeds, self.members, strict=True)
            )
        ]


def train_seed(
    settings: Settings, task_name: str, root: Path, seed_index: int, fold: int | None = None
) -> SeedRun:
    """Train the model (or the ensemble) of seed index `seed_index` of `finetune.seed_values()`
    (on cross-validation fold `fold`'s splits)."""
    from neurotransfer.train.finetune import train_task

    ft = settings.finetune
    seed_value = ft.seed_values()[seed_index]
    member_seeds = ft.member_seeds(seed_value)
    members: list[TrainedTask] = []
    for member, member_seed in enumerate(member_seeds):
        log.info(
            "%sseed %d (%d of %d)%s: training seed %d",
            "" if fold is None else f"fold {fold} of {settings.data.splits.k}, ",
            seed_value,
            seed_index + 1,
            ft.seeds,
            f", ensemble member {member + 1} of {len(member_seeds)}"
            if len(member_seeds) > 1
            else "",
            member_seed,
        )
        trained = train_task(
            settings,
            task_name,
            root,
            finetune=ft.model_copy(update={"seed": member_seed}),
            log_dir=model_log_dir(root, task_name, seed_index, seed_value, member, fold),
            fold=fold,
        )
        # The weights are saved once every seed has trained: keep them off the accelerator.
        trained.module.cpu()
        members.append(trained)
    return SeedRun(seed_value, member_seeds, members)


def _init_seed_process(parent_pid: int) -> None:
    import torch

    die_with_parent(parent_pid)
    # One thread: GNU OpenMP hangs in a forked child that asks for a thread team when the
    # parent had one (the parent may have run torch ops); DataLoader workers do the same.
    torch.set_num_threads(1)


def train_all_seeds(
    settings: Settings, task_name: str, root: Path, folds: list[int | None]
) -> list[list[SeedRun]]:
    """Every seed of every fold (``[fold][seed index]``), one after another in this process, or
    with ``finetune.seed_processes`` > 1 side by side in forked one-thread processes.

    Each seed seeds its own run (`train_task`), so a seed's model does not depend on which
    process trains it or in what order; it can differ in the last bits from the same seed
    trained with another thread count, as it can on another machine.
    """
    ft = settings.finetune
    jobs = [(fold, index) for fold in folds for index in range(ft.seeds)]
    processes = min(ft.seed_processes, len(jobs))
    if processes == 1:
        runs = [train_seed(settings, task_name, root, index, fold) for fold, index in jobs]
    else:
        log.info("training %d seed(s) in %d one-thread processes", len(jobs), processes)
        with ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_init_seed_process,
            initargs=(os.getpid(),),
        ) as pool:
            futures = [
                pool.submit(train_seed, settings, task_name, root, index, fold)
                for fold, index in jobs
            ]
            try:
                runs = [future.result() for future in futures]
            except BrokenProcessPool as error:
                raise RuntimeError(
                    f"finetune {task_name}: a seed-training process died ({error}), e.g. killed "
                    "for memory; set finetune.seed_processes=1 to train the seeds one after "
                    "another in the stage's process"
                ) from error
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    return [runs[i * ft.seeds : (i + 1) * ft.seeds] for i in range(len(folds))]


def check_folds(settings: Settings, task_name: str, root: Path) -> None:
    """Read every fold's splits before any training: a fold that cannot train or score the
    task (too few subjects, a class missing) stops the stage at start, naming the fold and
    ``data.splits.k``, not after the earlier folds have trained."""
    from neurotransfer.train.finetune import task_datamodule

    for fold in settings.data.splits.folds():
        task_datamodule(settings, task_name, root, fold=fold).setup("fit")


def run_finetune(
    settings: Settings, task_name: str, root: Path = Path(".")
) -> dict[str, Any] | None:
    """Fine-tune `task_name` once per seed value (in every cross-validation fold); write the
    models and return the metrics.

    Seed values are ``finetune.seed_values()`` (``seed * seeds + k``); with
    ``finetune.ensemble_size`` > 1 each seed value trains an ensemble whose member seeds derive
    from it (`FinetuneSettings.member_seeds`), so no two networks share a seed. Every fold uses
    the same seed values. All models are saved together, once the last has trained: a run killed
    or failing part-way leaves the previous models in place and restarts from the beginning.

    Under DDP every process trains, but only the global-zero process writes the models and gets
    the metrics back (the others return None), so no two processes write the same file.
    """
    from neurotransfer.train.finetune import task_settings

    task_settings(settings, task_name)  # an unknown task fails before any work
    folds = settings.data.splits.folds()
    check_folds(settings, task_name, root)
    # Logs of an earlier run with more seeds, members or folds. ignore_errors: under DDP every
    # process gets here.
    for stale in (SEED_LOGS, MEMBER_LOGS, FOLD_LOGS):
        shutil.rmtree(finetune_log_dir(task_name, root) / stale, ignore_errors=True)
    clock = time.perf_counter()
    fold_runs = train_all_seeds(settings, task_name, root, folds)
    wall_seconds = time.perf_counter() - clock

    if not fold_runs[0][0].members[0].result.is_global_zero:
        return None
    save_models(settings, task_name, root, folds, fold_runs)
    return run_metrics(settings, task_name, folds, fold_runs, wall_seconds)


def _run_meta(settings: Settings, task_name: str, first: TrainedTask) -> dict[str, Any]:
    """The task folder's ``meta.json`` (`train.checkpoint` adds the seed values and folds)."""
    from neurotransfer.train.finetune import task_settings

    ft = settings.finetune
    return {
        "task": task_name,
        "kind": task_settings(settings, task_name).kind,
        "model": settings.model.name,
        "model_options": settings.model.options,
        "input_shape": list(settings.data.preprocess.shape),
        "init": first.init_record,
        "mode": ft.mode,
        "seed": ft.seed,
        "n_seeds": ft.seeds,
        "ensemble_size": ft.ensemble_size,
        "select_epoch": ft.select_epoch,
        "monitor": first.result.monitor,
    }


def _seed_meta(settings: Settings, task_name: str, run: SeedRun) -> dict[str, Any]:
    """``seed<k>/meta.json``: what rebuilding and describing this seed's module(s) needs."""
    from neurotransfer.train.finetune import task_settings

    task = task_settings(settings, task_name)
    first = run.members[0]
    return {
        "task": task_name,
        "kind": task.kind,
        "model": settings.model.name,
        "model_options": settings.model.options,
        "input_shape": list(settings.data.preprocess.shape),
        "init": first.init_record,
        "mode": settings.finetune.mode,
        "seed": run.seed,
        "select_epoch": settings.finetune.select_epoch,
        "best_epoch": first.result.best_epoch,
        "monitor": first.result.monitor,
        "best_score": first.result.best_score,
        "target_mean": first.target_mean,
        "target_std": first.target_std,
        "ensemble_size": len(run.members),
        "members": run.member_records(),
    }


def save_models(
    settings: Settings,
    task_name: str,
    root: Path,
    folds: list[int | None],
    fold_runs: list[list[SeedRun]],
) -> None:
    """Write every fold's seed models to ``models/finetuned/<task>/`` in one go."""
    from neurotransfer.train.checkpoint import SeedModel, save_fold_models, save_seed_models

    run_meta = _run_meta(settings, task_name, fold_runs[0][0].members[0])
    fold_models = [
        [
            SeedModel(
                run.seed, [m.module for m in run.members], _seed_meta(settings, task_name, run)
            )
            for run in runs
        ]
        for runs in fold_runs
    ]
    directory = finetuned_dir(task_name, root)
    if folds == [None]:
        save_seed_models(fold_models[0], directory, run_meta)
    else:
        save_fold_models(fold_models, directory, run_meta)


def run_metrics(
    settings: Settings,
    task_name: str,
    folds: list[int | None],
    fold_runs: list[list[SeedRun]],
    wall_seconds: float,
) -> dict[str, Any]:
    """``metrics/finetune/<task>.json``: the run, the means over seeds, each split's (fold's)
    subjects and seeds, and the training cost."""
    import numpy as np
    import torch

    from neurotransfer.train.checkpoint import fold_dir
    from neurotransfer.train.finetune import task_settings

    ft = settings.finetune
    first = fold_runs[0][0].members[0]
    result = first.result
    metrics: dict[str, Any] = {
        "task": task_name,
        "kind": task_settings(settings, task_name).kind,
        "model": settings.model.name,
        "init": first.init_record["source"],
        "select_epoch": ft.select_epoch,
        "monitor": result.monitor,
        "n_seeds": ft.seeds,
        **_run_summary([run for runs in fold_runs for run in runs], result.monitor),
        # train_seconds adds up every network's training; with seed_processes > 1 they overlap
        "train_wall_seconds": round(wall_seconds, 2),
        "seed_processes": min(ft.seed_processes, len(folds) * ft.seeds),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "host": platform.node() or "unknown",
        "trainable_parameters": int(
            np.sum([p.numel() for p in first.module.parameters() if p.requires_grad])
        ),
    }
    if folds == [None]:
        metrics.update(_split_summary(fold_runs[0]))
    else:
        metrics["n_folds"] = len(folds)
        # Keyed by fold, not a list: `dvc metrics show/diff` flatten dicts.
        metrics["folds"] = {
            fold_dir(fold): _split_summary(runs)
            for fold, runs in zip(folds, fold_runs, strict=True)
            if fold is not None
        }
    if ft.ensemble_size > 1:
        metrics["ensemble_size"] = ft.ensemble_size
    return metrics


def _run_summary(runs: list[SeedRun], monitor: str) -> dict[str, Any]:
    """Means over every trained seed (of every fold), and the training cost. With select_epoch
    "last" the "best" entries describe the last epoch, the one kept."""
    import numpy as np

    trained = [m for run in runs for m in run.members]
    seconds = sum(m.result.seconds for m in trained)
    epochs = sum(m.result.epochs_run for m in trained)
    scores = [run.best_score for run in runs]
    return {
        f"best_{monitor}": float(np.mean(scores)),
        f"best_{monitor}_seed_sd": float(np.std(scores, ddof=1)) if len(runs) > 1 else 0.0,
        "best_epoch": float(np.mean([run.members[0].result.best_epoch for run in runs])),
        "epochs_run": float(np.mean([run.members[0].result.epochs_run for run in runs])),
        "train_seconds": round(seconds, 2),
        "seconds_per_epoch": round(seconds / max(1, epochs), 3),
    }


def _split_summary(runs: list[SeedRun]) -> dict[str, Any]:
    """The subjects one split (or fold) trained on, and each seed's record."""
    from neurotransfer.train.checkpoint import seed_dir

    first = runs[0].members[0]
    return {
        "n_train": len(first.train_frame),
        "n_val": len(first.val_frame),
        # Keyed by seed value, not a list: `dvc metrics show/diff` flatten dicts.
        "seeds": {seed_dir(run.seed): _seed_metrics(run) for run in runs},
    }


def _seed_metrics(run: SeedRun) -> dict[str, Any]:
    """One seed's entry of the finetune metrics (for an ensemble: the members' mean score, the
    first member's epochs, and every member's record)."""
    first = run.members[0].result
    entry: dict[str, Any] = {
        "seed": run.seed,
        f"best_{first.monitor}": run.best_score,
        "best_epoch": first.best_epoch,
        "epochs_run": first.epochs_run,
        "train_seconds": round(sum(m.result.seconds for m in run.members), 2),
    }
    if len(run.members) > 1:
        # Keyed, not a list: `dvc metrics show/diff` flatten dicts.
        entry["members"] = {
            f"member{index}": {k: v for k, v in record.items() if k != "file"}
            for index, record in enumerate(run.member_records())
        }
    return entry
