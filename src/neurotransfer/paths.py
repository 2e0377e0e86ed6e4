"""Every output path of the pipeline, in one place (``dvc.yaml`` declares the same ones).

Paths a user may move are parameters (``cohort.out_dir``, ``data.processed_dir``,
``synthesize.model_dir``, ``pretrain.out_dir``, ``scaling.out_dir``, ...): their defaults are
the constants below, and :func:`stage_outputs` reads them from the settings. The rest are fixed
here. ``tests/test_paths.py`` checks that :func:`stage_outputs` and ``dvc.yaml`` list the same
paths for every stage, in both directions, so a path written by the code and not declared (or
declared and never written) fails a test instead of going unversioned.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neurotransfer.config import Settings

# Parameter defaults (config.py uses these).
PHANTOM_RAW_DIR = "data/raw"
PHANTOM_TRUTH_DIR = "data/phantom_truth"
COHORT_REPORT_DIR = "reports/cohort"
PROCESSED_DIR = "data/processed"
QC_DIR = "reports/qc"
LDM_DIR = "models/ldm"
SYNTHETIC_DIR = "data/synthetic"
SYNTHETIC_REPORT_DIR = "reports/synthetic"
SYNTHESIZE_METRICS = "metrics/synthesize.json"
SYNTHESIZE_LOG_DIR = "dvclive/synthesize"
PRETRAINED_DIR = "models/pretrained"
PRETRAIN_METRICS = "metrics/pretrain.json"
PRETRAIN_LOG_DIR = "dvclive/pretrain"
SCALING_DIR = "reports/scaling"
SCALING_METRICS = "metrics/scaling.json"

# Fixed paths.
COHORT_METRICS = Path("metrics/cohort.json")
PREPROCESS_METRICS = Path("metrics/preprocess.json")
FINETUNED_DIR = Path("models/finetuned")
FINETUNE_METRICS_DIR = Path("metrics/finetune")
FINETUNE_LOG_DIR = Path("dvclive/finetune")
EVAL_METRICS_DIR = Path("metrics/eval")
EVAL_REPORT_DIR = Path("reports/eval")
SUMMARY = Path("reports/summary.md")
# dvclive writes its step curves here, under each stage's log folder.
LIVE_PLOTS = Path("plots/metrics")
LIVE_METRICS = Path("metrics.json")


def finetuned_dir(task: str, root: Path = Path(".")) -> Path:
    """The task's fine-tuned models (one folder per seed) and ``meta.json``."""
    return root / FINETUNED_DIR / task


def finetune_metrics(task: str, root: Path = Path(".")) -> Path:
    return root / FINETUNE_METRICS_DIR / f"{task}.json"


def finetune_log_dir(task: str, root: Path = Path(".")) -> Path:
    """The dvclive folder ``dvc.yaml`` declares for the task (the first seed's first model)."""
    return root / FINETUNE_LOG_DIR / task


def eval_metrics(task: str, root: Path = Path(".")) -> Path:
    return root / EVAL_METRICS_DIR / f"{task}.json"


def eval_report_dir(task: str, root: Path = Path(".")) -> Path:
    """Predictions, curve tables and figures of one task's evaluation."""
    return root / EVAL_REPORT_DIR / task


def stage_outputs(settings: Settings) -> dict[str, set[str]]:
    """Stage name (``finetune@ad`` for a task's) -> every path it writes (outs, metrics, plots)."""
    synth, pretrain, scaling = settings.synthesize, settings.pretrain, settings.scaling
    outputs: dict[str, set[str]] = {
        "preprocess": {settings.data.processed_dir, settings.data.qc_dir, str(PREPROCESS_METRICS)},
        "pretrain": {
            pretrain.out_dir,
            pretrain.metrics_path,
            str(Path(pretrain.log_dir) / LIVE_PLOTS),
        },
        "scaling": {scaling.out_dir, scaling.metrics_path},
        "report": {str(SUMMARY)},
    }
    if settings.cohort is not None:
        cohort = settings.cohort
        outputs["cohort"] = {
            cohort.out_dir,
            cohort.truth_dir,
            cohort.report_dir,
            str(COHORT_METRICS),
        }
    if synth is not None:
        outputs["synthesize"] = {
            synth.model_dir,
            synth.out_dir,
            synth.report_dir,
            synth.metrics_path,
            *(
                str(Path(synth.log_dir) / part / LIVE_PLOTS)
                for part in ("autoencoder", "diffusion")
            ),
        }
    for task in settings.tasks:
        log_dir = finetune_log_dir(task)
        outputs[f"finetune@{task}"] = {
            str(finetuned_dir(task)),
            str(finetune_metrics(task)),
            str(log_dir / LIVE_METRICS),
            str(log_dir / LIVE_PLOTS),
        }
        outputs[f"evaluate@{task}"] = {str(eval_report_dir(task)), str(eval_metrics(task))}
    return outputs
