"""Every source end to end on a tiny fake project: backbone + meta.json + metrics/pretrain.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models.video.resnet import BasicBlock, BasicStem, Conv3DSimple, VideoResNet

from neurotransfer.config import SettingsError
from neurotransfer.models import load_backbone
from neurotransfer.pretrain.data import read_synthetic_scans
from neurotransfer.pretrain.probe import age_probe
from neurotransfer.stages.pretrain import run_pretrain
from tests.pretrain.helpers import SHAPE, make_project, settings
from tests.synth.phantoms import drop_pool_role

TRAINING = {"epochs": 1, "batch_size": 4, "warmup_epochs": 0, "lr": 1e-3}


def read_outputs(root: Path) -> tuple[dict, dict]:
    metrics = json.loads((root / "metrics" / "pretrain.json").read_text())
    backbone, meta = load_backbone(root / "models" / "pretrained")
    assert backbone.spec is not None and tuple(backbone.spec.input_shape) == SHAPE
    return metrics, meta


def check_common(metrics: dict, meta: dict, source: str, architecture: str) -> None:
    assert metrics["source"] == meta["source"] == source
    assert metrics["architecture"] == meta["architecture"] == architecture
    assert meta["input_shape"] == list(SHAPE)
    assert len(meta["data"]["manifest_sha256"]) == 64
    assert len(meta["data"]["pool_arrays_sha256"]) == 64
    probe = metrics["probe"]
    assert probe["n_fit"] + probe["n_val"] == 12
    assert probe["n_val"] == 3  # round(0.25 * 12) whole subjects
    assert np.isfinite(probe["mae"])


def test_scratch_records_the_own_initialisation(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    metrics = run_pretrain(settings({"source": "scratch", "seed": 3}), root)
    on_disk, meta = read_outputs(root)
    assert on_disk == json.loads(json.dumps(metrics))
    check_common(on_disk, meta, "scratch", "sfcn")
    assert on_disk["n_volumes"] == 0 and on_disk["epochs"] == 0
    # Same seed, same weights: the scratch initialisation is reproducible.
    first = (root / "models" / "pretrained" / "backbone.safetensors").read_bytes()
    run_pretrain(settings({"source": "scratch", "seed": 3}), root)
    assert (root / "models" / "pretrained" / "backbone.safetensors").read_bytes() == first
    assert (root / "dvclive" / "pretrain" / "plots" / "metrics").is_dir()
    leftovers = [p.name for p in (root / "models").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_imagenet_slice2d_from_local_safetensors(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    cfg = settings(
        {"source": "imagenet", "weights_path": str(path)},
        {"name": "slice2d", "options": {"encoder": "resnet18", "embed_dim": 8}},
    )
    run_pretrain(cfg, root)
    metrics, meta = read_outputs(root)
    check_common(metrics, meta, "imagenet", "slice2d")
    assert meta["external"]["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert meta["external"]["weights_file"] == str(path)
    assert meta["external"]["keys_own_init"] > 0  # slice projection and position embedding
    backbone, _ = load_backbone(root / "models" / "pretrained")
    conv = backbone.encoder.net.conv1.weight
    assert torch.equal(conv, state["conv1.weight"].sum(dim=1, keepdim=True))


def test_kinetics_r3d_from_local_torch_file(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    torch.manual_seed(0)
    # torchvision's R3D with one block per stage (a ResNet-10): the same key layout, faster.
    video = VideoResNet(BasicBlock, [Conv3DSimple] * 4, [1, 1, 1, 1], BasicStem)
    state = video.state_dict()
    path = tmp_path / "r3d_18-b3b3357e.pth"
    torch.save(state, path)
    model = {"name": "r3d_18", "options": {"layers": [1, 1, 1, 1]}}
    run_pretrain(settings({"source": "kinetics", "weights_path": str(path)}, model), root)
    metrics, meta = read_outputs(root)
    check_common(metrics, meta, "kinetics", "r3d_18")
    assert metrics["weights"] == "R3D_18_Weights.KINETICS400_V1"
    backbone, _ = load_backbone(root / "models" / "pretrained")
    assert torch.equal(backbone.net.layer4[0].conv2[0].weight, state["layer4.0.conv2.0.weight"])


def test_synthetic_covariates_simclr_masked(tmp_path: Path) -> None:
    root = make_project(tmp_path, n_synthetic=8)
    cfg = settings(
        {
            "source": "synthetic",
            "objectives": ["covariates", "simclr", "masked"],
            "covariates": ["age", "sex_scaled", "brain_volume_ml"],
            **TRAINING,
        }
    )
    run_pretrain(cfg, root)
    metrics, meta = read_outputs(root)
    check_common(metrics, meta, "synthetic", "sfcn")
    assert metrics["n_volumes"] == 8 and metrics["epochs"] == 1
    losses = metrics["final_losses"]
    assert {"covariates_loss", "simclr_loss", "masked_loss", "loss"} <= set(losses)
    assert all(np.isfinite(v) for v in losses.values())
    assert len(meta["data"]["synthetic_volumes_sha256"]) == 64
    assert set(meta["covariate_scaling"]) == {"age", "sex_scaled", "brain_volume_ml"}
    assert (root / "dvclive" / "pretrain" / "plots" / "metrics" / "train").is_dir()


def test_ssl_on_the_pool_with_a_volume_cap(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    cfg = settings(
        {"source": "ssl", "objectives": ["simclr", "masked"], "max_volumes": 8, **TRAINING}
    )
    run_pretrain(cfg, root)
    metrics, meta = read_outputs(root)
    check_common(metrics, meta, "ssl", "sfcn")
    assert metrics["n_volumes"] == 8
    assert meta["training"]["masked"]["patch_size"] == 8
    assert {"simclr_loss", "masked_loss"} <= set(metrics["final_losses"])


def test_unsupported_source_fails_before_reading_data(tmp_path: Path) -> None:
    # No project at all: the combination check must come first.
    with pytest.raises(SettingsError, match="supports"):
        run_pretrain(settings({"source": "imagenet"}), tmp_path)


def test_missing_covariate_column_names_the_available_ones(tmp_path: Path) -> None:
    root = make_project(tmp_path, n_synthetic=4)
    with pytest.raises(SettingsError, match="brain_volume_ml"):
        read_synthetic_scans(root / "data" / "synthetic", ["age", "iq"])


def test_failed_run_leaves_previous_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_project(tmp_path)
    run_pretrain(settings({"source": "scratch"}), root)
    before = (root / "models" / "pretrained" / "meta.json").read_text()

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    # The stage imports save_backbone when it runs (a function-level import): patch its home.
    monkeypatch.setattr("neurotransfer.models.save_backbone", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        run_pretrain(settings({"source": "scratch", "seed": 1}), root)
    assert (root / "models" / "pretrained" / "meta.json").read_text() == before
    assert sorted(p.name for p in (root / "models").iterdir()) == ["pretrained"]


def test_probe_decodes_age_from_informative_features() -> None:
    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 90, 40)
    rows = pd.DataFrame({"subject_id": [f"s{i}" for i in range(40)], "age": ages})
    informative = np.c_[ages + rng.normal(0, 1, 40), rng.normal(size=(40, 3))]
    alphas = (0.1, 1.0, 10.0, 100.0, 1000.0)
    good = age_probe(informative, rows, 0.25, alphas, seed=0)
    noise = age_probe(rng.normal(size=(40, 4)), rows, 0.25, alphas, seed=0)
    assert good["n_val"] == 10 and good["mae"] < 3 < noise["mae"]
    assert good["r2"] > 0.9 and good["ridge_alpha"] in alphas
    # Noise features: cross-validation picks a strong penalty, so the probe falls back towards
    # the mean age instead of overfitting (a fixed small penalty does much worse than the mean).
    assert noise["ridge_alpha"] >= 100.0
    assert noise["mae"] < 1.2 * noise["mean_predictor_mae"]
    few = age_probe(informative[:3], rows[:3], 0.25, alphas, seed=0)
    assert few["mae"] is None and "too few" in few["note"]


def test_ssl_masked_on_vit3d_uses_the_model_patches(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    vit = {
        "name": "vit3d",
        "options": {
            "patch_size": 4,
            "hidden_size": 16,
            "mlp_dim": 32,
            "num_layers": 1,
            "num_heads": 2,
        },
    }
    cfg = settings(
        {"source": "ssl", "objectives": ["masked"], "masked": {"patch_size": 8}, **TRAINING},
        vit,
    )
    run_pretrain(cfg, root)
    metrics, meta = read_outputs(root)
    check_common(metrics, meta, "ssl", "vit3d")
    assert meta["training"]["masked"]["patch_size"] == 4


def test_without_a_pool_scratch_runs_and_skips_the_probe(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    manifest = drop_pool_role(root)
    metrics = run_pretrain(settings({"source": "scratch"}), root)
    on_disk, meta = read_outputs(root)
    assert on_disk["probe"]["skipped"].startswith(f"{manifest}: no upstream pool")
    assert "mae" not in on_disk["probe"] and metrics["n_volumes"] == 0
    assert meta["data"]["pool_scans"] == 0
    assert (root / "dvclive" / "pretrain" / "plots" / "metrics").is_dir()


def test_without_a_pool_the_sources_that_need_one_say_so(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    drop_pool_role(root)
    with pytest.raises(ValueError, match="no rows with role == 'pool'"):
        run_pretrain(settings({"source": "ssl", "objectives": ["masked"], **TRAINING}), root)
    # The synthesize stage left its note instead of a dataset: pretrain quotes it.
    note = root / "data" / "synthetic" / "SKIPPED.md"
    note.parent.mkdir(parents=True)
    note.write_text("synthesize skipped: no upstream pool scans\n")
    with pytest.raises(FileNotFoundError, match="not found \\(synthesize skipped: no upstream"):
        run_pretrain(settings({"source": "synthetic", "objectives": ["masked"], **TRAINING}), root)
    assert not (root / "models" / "pretrained").exists()
