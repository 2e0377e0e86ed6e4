"""Outputs of the stage: the model folder, the BIDS-like dataset, and atomic publishing."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from neurotransfer.config import AutoencoderNetSettings, DiffusionNetSettings
from neurotransfer.synth.networks import build_autoencoder, build_unet
from neurotransfer.synth.store import (
    grid_affine,
    load_ldm,
    nifti_gz_bytes,
    participant_ids,
    save_ldm,
    write_synthetic_dataset,
)
from tests.synth.helpers import needs_einops, randomise


@needs_einops
def test_model_folder_round_trips_without_pickle(tmp_path: Path) -> None:
    ae_net = AutoencoderNetSettings(channels=[8, 16], attention_levels=[False, False])
    unet_net = DiffusionNetSettings(
        channels=[16, 32], attention_levels=[False, True], num_head_channels=[0, 16]
    )
    autoencoder = randomise(build_autoencoder(ae_net), 0).eval()
    unet = randomise(build_unet(unet_net, 3), 1).eval()
    save_ldm(
        tmp_path,
        autoencoder,
        unet,
        {
            "autoencoder": ae_net.model_dump(),
            "diffusion": unet_net.model_dump(),
            "scale_factor": 0.5,
            "loss": float("nan"),
        },
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "autoencoder.safetensors",
        "config.json",
        "unet.safetensors",
    ]
    loaded_ae, loaded_unet, config = load_ldm(tmp_path)
    assert config["scale_factor"] == 0.5 and config["loss"] is None
    x = torch.rand(1, 1, 16, 16, 16)
    torch.testing.assert_close(loaded_ae.reconstruct(x), autoencoder.reconstruct(x))
    z, t, c = torch.randn(1, 7, 8, 8, 8), torch.tensor([3]), torch.rand(1, 1, 4)
    torch.testing.assert_close(loaded_unet(z, t, context=c), unet(z, t, context=c))


def test_loading_a_folder_that_is_not_a_model_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json: model config not found"):
        load_ldm(tmp_path)
    (tmp_path / "config.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="is not neurotransfer-ldm/1"):
        load_ldm(tmp_path)


def test_affine_is_ras_at_the_spacing_and_centred() -> None:
    affine = grid_affine((40, 48, 40), (4.0, 4.0, 4.0))
    np.testing.assert_array_equal(np.diag(affine)[:3], [4.0, 4.0, 4.0])
    centre = affine @ np.array([19.5, 23.5, 19.5, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")


def test_nifti_bytes_are_reproducible_and_carry_no_timestamp() -> None:
    volume = np.random.default_rng(0).random((6, 7, 8), dtype=np.float32)
    first = nifti_gz_bytes(volume, grid_affine((6, 7, 8), (2.0, 2.0, 2.0)))
    assert first == nifti_gz_bytes(volume, grid_affine((6, 7, 8), (2.0, 2.0, 2.0)))
    assert first[4:8] == b"\x00\x00\x00\x00"  # gzip MTIME field
    image = nib.Nifti1Image.from_bytes(gzip.decompress(first))
    np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), volume)


def participants(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "participant_id": participant_ids(n),
            "age": np.linspace(30, 80, n),
            "sex": ["F", "M"] * (n // 2),
        }
    )


def test_synthetic_dataset_is_bids_like(tmp_path: Path) -> None:
    volumes = torch.rand(4, 1, 6, 7, 8)
    write_synthetic_dataset(tmp_path, volumes, participants(4), (4.0, 4.0, 4.0), {"Name": "x"})
    image = nib.load(tmp_path / "sub-synth0003" / "anat" / "sub-synth0003_T1w.nii.gz")
    assert image.shape == (6, 7, 8)
    np.testing.assert_allclose(image.header.get_zooms(), (4.0, 4.0, 4.0))
    np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), volumes[2, 0].numpy())
    table = pd.read_csv(tmp_path / "participants.tsv", sep="\t")
    assert list(table.columns) == ["participant_id", "age", "sex"]
    assert list(table["participant_id"]) == [
        "sub-synth0001",
        "sub-synth0002",
        "sub-synth0003",
        "sub-synth0004",
    ]
    sidecar = json.loads((tmp_path / "participants.json").read_text())
    assert set(sidecar) == {"participant_id", "age", "sex"}
    assert json.loads((tmp_path / "dataset_description.json").read_text())["Name"] == "x"


def test_dataset_rows_must_match_volumes_and_columns_be_documented(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 participant rows for 4 volumes"):
        write_synthetic_dataset(
            tmp_path, torch.rand(4, 1, 2, 2, 2), participants(4).iloc[:3], (1.0,) * 3, {}
        )
    with pytest.raises(ValueError, match=r"undocumented column\(s\) \['site'\]"):
        write_synthetic_dataset(
            tmp_path, torch.rand(4, 1, 2, 2, 2), participants(4).assign(site="x"), (1.0,) * 3, {}
        )


def test_participant_ids_widen_for_large_datasets() -> None:
    assert participant_ids(2) == ["sub-synth0001", "sub-synth0002"]
    assert participant_ids(12000)[-1] == "sub-synth12000"
