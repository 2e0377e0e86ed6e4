"""The fast DVCLive logger: same sync decisions as dvclive's, same files written."""

from __future__ import annotations

import json
from pathlib import Path

from dvclive.lightning import _should_sync

from neurotransfer.live_logger import called_from_sync_point, dvclive_logger


def both_answers() -> tuple[bool, bool]:
    return called_from_sync_point(), _should_sync()


def update_train_epoch_metrics() -> tuple[bool, bool]:  # the name Lightning syncs from
    return both_answers()


def log_eval_end_metrics() -> tuple[bool, bool]:
    return both_answers()


def test_the_frame_walk_agrees_with_dvclive_on_when_to_sync() -> None:
    assert both_answers() == (False, False)
    assert update_train_epoch_metrics() == (True, True)
    assert log_eval_end_metrics() == (True, True)


def test_metrics_logged_from_a_sync_point_reach_the_files(tmp_path: Path) -> None:
    logger = dvclive_logger(tmp_path / "live")

    def update_train_step_metrics() -> None:
        logger.log_metrics({"train_loss": 0.5}, step=1)

    logger.log_metrics({"val_loss": 0.7}, step=1)  # not a sync point: buffered
    assert not (tmp_path / "live" / "metrics.json").exists()
    update_train_step_metrics()
    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
    # dvclive nests "train_loss" as train/loss
    assert summary["train"]["loss"] == 0.5 and summary["val"]["loss"] == 0.7
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    assert not (tmp_path / "dvc.yaml").exists()  # dvcyaml=None: the pipeline file is ours
