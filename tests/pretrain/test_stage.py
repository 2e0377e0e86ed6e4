"""The `neurotransfer pretrain` command, and fine-tuning's hand-off from models/pretrained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from neurotransfer.cli import main
from neurotransfer.config import SettingsError
from neurotransfer.stages.pretrain import run_pretrain
from neurotransfer.train.finetune import initial_backbone
from tests.pretrain.helpers import TINY_SFCN, make_project, raw_settings, settings


def write_params(root: Path, pretrain: dict, model: dict | None = None) -> Path:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw_settings(pretrain, model)), encoding="utf-8")
    return path


def test_cli_runs_the_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_project(tmp_path)
    write_params(tmp_path, {"source": "scratch"})
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain"]) == 0
    metrics = json.loads((tmp_path / "metrics/pretrain.json").read_text())
    assert metrics["source"] == "scratch" and metrics["architecture"] == "sfcn"
    assert (tmp_path / "models/pretrained/backbone.safetensors").is_file()


def test_cli_rejects_a_source_without_weights_for_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two dense blocks fit the tiny 16³ volumes, so the source rule is the one that fails.
    write_params(
        tmp_path,
        {"source": "kinetics"},
        {"name": "densenet121", "options": {"block_config": [2, 2]}},
    )
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain"]) == 2
    err = capsys.readouterr().err
    assert "pretrain=kinetics" in err and "'densenet121'" in err and "r3d_18" in err


def test_finetune_starts_from_the_recorded_backbone(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    run_pretrain(settings({"source": "scratch", "seed": 5}), root)
    backbone, record = initial_backbone(settings({"source": "scratch", "seed": 5}), root)
    assert record["source"] == "scratch"
    assert record["pretrained_meta"]["seed"] == 5
    from neurotransfer.models import load_backbone

    saved, _ = load_backbone(root / "models/pretrained")
    for key, value in saved.state_dict().items():
        assert torch.equal(backbone.state_dict()[key], value)


def test_finetune_refuses_a_missing_or_mismatched_backbone(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    with pytest.raises(FileNotFoundError, match="dvc repro pretrain"):
        initial_backbone(settings({"source": "scratch"}), root)
    run_pretrain(settings({"source": "scratch"}), root)
    wider = {"name": "sfcn", "options": {**TINY_SFCN["options"], "channels": [4, 8, 16]}}
    cases = [
        (settings({"source": "scratch"}, wider), "options"),
        (settings({"source": "ssl", "objectives": ["simclr"], "epochs": 1}), "source"),
        (
            settings(
                {"source": "scratch"},
                {"name": "slice2d", "options": {"encoder": "cnn", "cnn_channels": [4, 8]}},
            ),
            "architecture",
        ),
    ]
    for cfg, needle in cases:
        with pytest.raises(SettingsError, match="dvc repro pretrain") as err:
            initial_backbone(cfg, root)
        assert needle in str(err.value)
