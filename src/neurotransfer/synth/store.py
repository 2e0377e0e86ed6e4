"""Files the stage writes: the model folder, the BIDS-like synthetic dataset, atomic publishing.

``models/ldm/``: ``autoencoder.safetensors`` and ``unet.safetensors`` (MONAI-core key layout,
loadable without pickle) and ``config.json`` (architectures, noise schedule, latent scale
factor, grid, covariate scaling and the volume-measurement thresholds): everything needed to
sample again with :func:`load_ldm`.

``data/synthetic/``: ``dataset_description.json``, ``participants.tsv`` (+ ``.json`` sidecar)
and ``sub-synthNNNN/anat/sub-synthNNNN_T1w.nii.gz`` float32 volumes in [0, 1] on a RAS grid
centred on the origin at the target spacing, gzip-compressed with mtime 0 so that identical
volumes give identical bytes.

The ``synthesize`` stage (:mod:`neurotransfer.stages.synthesize`) fills each output folder
through ``neurotransfer.atomic.atomic_directory``, so a killed run leaves the previous outputs or
nothing, never a half-written folder.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from neurotransfer.config import AutoencoderNetSettings, DiffusionNetSettings
from neurotransfer.runtime import json_ready
from neurotransfer.synth.covariates import COVARIATES
from neurotransfer.synth.networks import build_autoencoder, build_unet
from neurotransfer.synth.quality import MemorisationResult

MODEL_FORMAT = "neurotransfer-ldm/1"
AUTOENCODER_FILE = "autoencoder.safetensors"
UNET_FILE = "unet.safetensors"
CONFIG_FILE = "config.json"


def _contiguous_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_ldm(folder: Path, autoencoder: nn.Module, unet: nn.Module, config: dict[str, Any]) -> None:
    """Write the two networks as safetensors and ``config`` (JSON-ready) next to them."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_contiguous_state(autoencoder), str(folder / AUTOENCODER_FILE))
    save_file(_contiguous_state(unet), str(folder / UNET_FILE))
    payload = json_ready({"format": MODEL_FORMAT, **config})
    (folder / CONFIG_FILE).write_text(
        json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8"
    )


def load_ldm(folder: Path) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """Rebuild the networks saved by :func:`save_ldm` and load their weights."""
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: model config not found (run `synthesize`)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("format") != MODEL_FORMAT:
        raise ValueError(f"{config_path}: format {config.get('format')!r} is not {MODEL_FORMAT}")
    ae_net = AutoencoderNetSettings.model_validate(config["autoencoder"])
    unet_net = DiffusionNetSettings.model_validate(config["diffusion"])
    autoencoder = build_autoencoder(ae_net)
    unet = build_unet(unet_net, ae_net.latent_channels)
    autoencoder.load_state_dict(load_file(str(folder / AUTOENCODER_FILE)))
    unet.load_state_dict(load_file(str(folder / UNET_FILE)))
    return autoencoder.eval(), unet.eval(), config


def grid_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """RAS voxel-to-mm affine of a grid whose centre lies at the origin."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -(np.asarray(shape, dtype=float) - 1.0) / 2.0 * np.asarray(spacing)
    return affine


def nifti_gz_bytes(volume: np.ndarray, affine: np.ndarray) -> bytes:
    """A float32 NIfTI-1 image, gzip-compressed reproducibly (no timestamp, no file name)."""
    image = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def participant_ids(n: int) -> list[str]:
    width = max(4, len(str(n)))
    return [f"sub-synth{i:0{width}d}" for i in range(1, n + 1)]


def participants_table(
    requested: pd.DataFrame,
    scaled: np.ndarray,
    measured: np.ndarray,
    memorisation: MemorisationResult,
) -> pd.DataFrame:
    """``participants.tsv``: requested covariates (raw and as given to the model), the volumes
    measured on each sample, and its memorisation check."""
    columns = {
        "participant_id": participant_ids(len(requested)),
        "age": requested["age"].round(2).to_numpy(),
        "sex": requested["sex"].to_numpy(),
    }
    for i, name in enumerate(COVARIATES):
        if name.endswith("_ml"):
            columns[name] = requested[name].round(2).to_numpy()
        columns[f"{name.removesuffix('_ml')}_scaled"] = scaled[:, i]
    columns["measured_csf_volume_ml"] = measured[:, 0]
    columns["measured_brain_volume_ml"] = measured[:, 1]
    columns["nearest_training_rms"] = memorisation.sample_distance
    columns["memorisation_flag"] = memorisation.flagged.astype(int)
    return pd.DataFrame(columns)


PARTICIPANT_COLUMNS: dict[str, str] = {
    "participant_id": "Synthetic subject identifier.",
    "age": "Requested age in years (conditioning covariate, raw).",
    "sex": "Requested sex, M or F (conditioning covariate).",
    "sex_scaled": "Sex as given to the model: 0 female, 1 male.",
    "age_scaled": "Age as given to the model, min-max scaled to [0, 1] over the training pool.",
    "csf_volume_ml": "Requested enclosed-CSF (ventricular) volume in ml.",
    "csf_volume_scaled": "CSF volume as given to the model, scaled to [0, 1].",
    "brain_volume_ml": "Requested brain (grey + white matter) volume in ml.",
    "brain_volume_scaled": "Brain volume as given to the model, scaled to [0, 1].",
    "measured_csf_volume_ml": "Enclosed-CSF volume measured on the sample, in ml.",
    "measured_brain_volume_ml": "Brain volume measured on the sample, in ml.",
    "nearest_training_rms": "RMS voxel distance to the nearest training scan.",
    "memorisation_flag": "1 when nearer to a training scan than held-out real scans come.",
}


def write_synthetic_dataset(
    folder: Path,
    volumes: torch.Tensor,
    participants: pd.DataFrame,
    spacing: tuple[float, float, float],
    description: dict[str, Any],
) -> None:
    """Write a BIDS-like dataset of ``volumes`` (``[N, 1, D, H, W]``) and their covariates."""
    if len(participants) != volumes.shape[0]:
        raise ValueError(f"{len(participants)} participant rows for {volumes.shape[0]} volumes")
    unknown = [c for c in participants.columns if c not in PARTICIPANT_COLUMNS]
    if unknown:
        raise ValueError(f"participants has undocumented column(s) {unknown}")
    affine = grid_affine(tuple(volumes.shape[2:]), spacing)
    for subject, volume in zip(participants["participant_id"], volumes, strict=True):
        anat = folder / subject / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        (anat / f"{subject}_T1w.nii.gz").write_bytes(nifti_gz_bytes(volume[0].numpy(), affine))
    participants.to_csv(folder / "participants.tsv", sep="\t", index=False, float_format="%.6g")
    sidecar = {c: {"Description": PARTICIPANT_COLUMNS[c]} for c in participants.columns}
    (folder / "participants.json").write_text(
        json.dumps(sidecar, indent=2) + "\n", encoding="utf-8"
    )
    (folder / "dataset_description.json").write_text(
        json.dumps(
            {"BIDSVersion": "1.9.0", "DatasetType": "derivative", **description},
            indent=2,
            sort_keys=True,
        )
        + "\n",
        encoding="utf-8",
    )
