"""The `synthesize` stage end to end on a tiny phantom pool: every output and its contract,
nothing written when a run fails, the pretrained-bundle path, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from neurotransfer.cli import main
from neurotransfer.data.manifest import has_pool
from neurotransfer.runtime import json_ready
from neurotransfer.stages import synthesize as stage
from neurotransfer.synth.bundle import to_legacy_layout
from neurotransfer.synth.networks import build_autoencoder, build_unet
from neurotransfer.synth.store import load_ldm
from tests.synth.helpers import SHAPE, needs_einops, randomise, tiny_settings
from tests.synth.phantoms import drop_pool_role, write_phantom_pool

OUTPUTS = ("models/ldm", "data/synthetic", "reports/synthetic")


def hidden_leftovers(root: Path) -> list[Path]:
    """Temporaries of the atomic output folders (hidden siblings named `.<name>.<random>`)."""
    return [p for output in OUTPUTS for p in (root / output).parent.glob(f".{Path(output).name}.*")]


@needs_einops
@pytest.mark.slow
def test_stage_trains_samples_and_writes_every_output(tmp_path: Path) -> None:
    write_phantom_pool(tmp_path, n_pool=16, shape=SHAPE)
    metrics = stage.run_synthesize(tiny_settings(), tmp_path)
    json.dumps(json_ready(metrics), allow_nan=False)

    assert metrics["pool"]["n_train"] + metrics["pool"]["n_heldout"] == 16
    assert metrics["pool"]["n_heldout"] == 4
    assert metrics["sampling"]["n_samples"] == 6
    for key in (
        "reconstruction",
        "diversity_ms_ssim",
        "realism_fid",
        "memorisation",
        "conditioning",
        "timing",
    ):
        assert key in metrics

    synthetic = tmp_path / "data" / "synthetic"
    table = pd.read_csv(synthetic / "participants.tsv", sep="\t")
    assert len(table) == 6
    assert {
        "participant_id",
        "age",
        "sex",
        "age_scaled",
        "csf_volume_ml",
        "brain_volume_ml",
        "memorisation_flag",
    } <= set(table.columns)
    assert (
        table[["sex_scaled", "age_scaled", "csf_volume_scaled", "brain_volume_scaled"]]
        .stack()
        .between(0, 1)
        .all()
    )
    image = nib.load(synthetic / "sub-synth0001" / "anat" / "sub-synth0001_T1w.nii.gz")
    data = image.get_fdata()
    assert data.shape == SHAPE
    assert data.min() >= 0.0 and data.max() <= 1.0
    np.testing.assert_allclose(image.header.get_zooms(), (4.0, 4.0, 4.0))

    _, _, config = load_ldm(tmp_path / "models" / "ldm")
    assert config["covariates"] == ["sex", "age", "csf_volume_ml", "brain_volume_ml"]
    assert config["latent_shape"] == [8, 8, 8]
    assert 0 < config["volume_measurement"]["csf_threshold"] < 1
    pictures = {p.name for p in (tmp_path / "reports" / "synthetic").iterdir()}
    assert {
        "samples_by_age.png",
        "real_vs_synthetic.png",
        "reconstruction.png",
        "conditioning.png",
        "memorisation.png",
        "memorisation.csv",
    } <= pictures
    assert hidden_leftovers(tmp_path) == []


@needs_einops
@pytest.mark.slow
def test_a_failing_run_leaves_no_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_phantom_pool(tmp_path, n_pool=12, shape=SHAPE)

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed while drawing the montage")

    monkeypatch.setattr("neurotransfer.synth.report.samples_by_age", fail)
    with pytest.raises(RuntimeError, match="killed while drawing"):
        stage.run_synthesize(
            tiny_settings(autoencoder={"epochs": 1}, diffusion={"epochs": 1}), tmp_path
        )
    for output in OUTPUTS:
        assert not (tmp_path / output).exists(), output
    assert hidden_leftovers(tmp_path) == []


@needs_einops
@pytest.mark.slow
def test_pretrained_bundle_weights_sample_on_their_grid_and_are_resampled(
    tmp_path: Path,
) -> None:
    write_phantom_pool(tmp_path, n_pool=8, shape=SHAPE)
    net = tiny_settings().synthesize
    assert net is not None
    weights = tmp_path / "bundle"
    weights.mkdir()
    torch.save(
        to_legacy_layout(randomise(build_autoencoder(net.autoencoder.net), 0).state_dict()),
        weights / "autoencoder.pt",
    )
    torch.save(
        to_legacy_layout(randomise(build_unet(net.diffusion.net, 3), 1).state_dict()),
        weights / "model.pt",
    )
    settings = tiny_settings(
        source="pretrained",
        pretrained={
            "autoencoder_path": "bundle/autoencoder.pt",
            "unet_path": "bundle/model.pt",
            "autoencoder": net.autoencoder.net.model_dump(),
            "diffusion": net.diffusion.net.model_dump(),
            "image_shape": [32, 32, 32],  # the model's own grid: 2 mm, resampled to 4 mm
            "spacing": [2.0, 2.0, 2.0],
        },
    )
    metrics = stage.run_synthesize(settings, tmp_path)
    assert metrics["source"] == "pretrained"
    assert metrics["model"]["pretrained"]["layouts"] == {
        "autoencoder": "generative",
        "diffusion": "generative",
    }
    assert metrics["model"]["latent_shape"] == [16, 16, 16]
    image = nib.load(tmp_path / "data/synthetic/sub-synth0001/anat/sub-synth0001_T1w.nii.gz")
    assert image.shape == SHAPE
    assert not (tmp_path / "dvclive").exists()  # nothing was trained


def test_cli_without_a_synthesize_block_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tiny_settings().model_dump(mode="json")
    del raw["synthesize"]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["--params", str(params), "synthesize"]) == 2
    assert "no `synthesize` block" in capsys.readouterr().err


def test_without_a_pool_the_stage_writes_notes_and_records_the_skip(tmp_path: Path) -> None:
    write_phantom_pool(tmp_path, n_pool=8, shape=SHAPE)
    manifest = drop_pool_role(tmp_path)
    assert not has_pool(manifest)

    metrics = stage.run_synthesize(tiny_settings(), tmp_path)

    assert "no upstream pool" in metrics["skipped"] and str(manifest) in metrics["skipped"]
    for output in OUTPUTS:  # every declared output exists, holding only the note
        assert [p.name for p in (tmp_path / output).iterdir()] == ["SKIPPED.md"]
        assert "no upstream pool" in (tmp_path / output / "SKIPPED.md").read_text()
    for network in ("autoencoder", "diffusion"):
        assert (tmp_path / "dvclive" / "synthesize" / network / "plots" / "metrics").is_dir()
    assert not (tmp_path / "models" / "ldm" / "autoencoder.safetensors").exists()
    assert hidden_leftovers(tmp_path) == []


def test_when_needed_the_stage_skips_unless_pretraining_reads_synthetic_volumes(
    tmp_path: Path,
) -> None:
    """synthesize.when=needed (the default): pretrain.source scratch skips the diffusion model,
    with the reason in every output; synthetic would train it."""
    write_phantom_pool(tmp_path, n_pool=8, shape=SHAPE)
    settings = tiny_settings(when="needed")
    assert settings.pretrain.source == "scratch"

    metrics = stage.run_synthesize(settings, tmp_path)

    assert "pretrain.source is 'scratch'" in metrics["skipped"]
    assert "synthesize.when=always" in metrics["skipped"]
    for output in OUTPUTS:
        assert [p.name for p in (tmp_path / output).iterdir()] == ["SKIPPED.md"]
    assert not (tmp_path / "models" / "ldm" / "autoencoder.safetensors").exists()
    synthetic = settings.model_copy(
        update={"pretrain": settings.pretrain.model_copy(update={"source": "synthetic"})}
    )
    assert stage.not_needed_reason(synthetic) is None
    assert stage.not_needed_reason(tiny_settings(when="always")) is None


def test_a_manifest_without_roles_is_an_error_naming_it(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"subject_id": ["s1"], "path": ["s1.npy"]}).to_csv(manifest, index=False)
    with pytest.raises(ValueError, match=r"manifest\.csv: not a neurotransfer manifest"):
        has_pool(manifest)
    with pytest.raises(FileNotFoundError, match=r"nope\.csv: manifest not found"):
        has_pool(tmp_path / "nope.csv")
