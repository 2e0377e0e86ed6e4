"""Quality and privacy of the synthetic volumes.

- **Reconstruction**: the autoencoder's error on held-out pool scans (never trained on):
  mean absolute error, PSNR and MS-SSIM (MONAI metrics, data range 1).
- **Diversity**: mean MS-SSIM between random pairs of samples (MONAI ``MultiScaleSSIMMetric``;
  lower means more diverse), next to the same figure for pairs of held-out real scans. MS-SSIM
  uses the standard five scale weights, truncated (and renormalised) to the scales the volume
  size allows for the kernel size.
- **Realism**: a Fréchet distance (MONAI ``FIDMetric``) between features of samples and of
  held-out real scans. The features are the global-average-pooled output of a MONAI 3D
  ResNet-10 with *fixed random* weights (seeded): pretrained 3D medical feature networks
  (MedicalNet, as in Pinaya et al.) cannot be downloaded here, and random convolutional
  embeddings still separate image distributions (Naeem et al. 2020). Absolute values are not
  comparable with published FIDs; compare with the real-to-real reference computed the same way
  (training scans vs held-out scans).
- **Memorisation**: for every sample its nearest training scan (root-mean-square voxel
  difference, optionally on average-pooled volumes). A sample is flagged when it is closer to a
  training scan than a chosen quantile (default: the minimum) of the distances from held-out
  real scans to their nearest training scan, i.e. closer than unseen real brains ever come.
- **Conditioning**: CSF and brain volumes measured on the samples with the same thresholds as
  on the pool, against the requested values (Pearson r, slope, mean absolute error).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from monai.metrics import FIDMetric, MultiScaleSSIMMetric, PSNRMetric
from monai.networks.nets import resnet10
from scipy.linalg import LinAlgWarning
from torch import nn

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_weights(shape: tuple[int, ...], kernel_size: int) -> tuple[float, ...]:
    """The most MS-SSIM scales that ``shape`` allows with ``kernel_size``, renormalised.

    A scale needs the kernel to fit the volume after halving it once per earlier scale; MONAI
    additionally checks ``size // (scales - 1)**2 > kernel_size - 1``.
    """
    for scales in range(len(MS_SSIM_WEIGHTS), 0, -1):
        fits = all(
            s // 2 ** (scales - 1) >= kernel_size and s // max(1, scales - 1) ** 2 > kernel_size - 1
            for s in shape
        )
        if fits:
            weights = MS_SSIM_WEIGHTS[:scales]
            return tuple(w / sum(weights) for w in weights)
    raise ValueError(f"volumes of shape {shape} are smaller than the MS-SSIM kernel {kernel_size}")


def paired_ms_ssim(
    a: torch.Tensor, b: torch.Tensor, kernel_size: int, batch_size: int = 16
) -> np.ndarray:
    """MS-SSIM of each pair ``(a[i], b[i])`` of ``[N, 1, D, H, W]`` volumes in [0, 1]."""
    metric = MultiScaleSSIMMetric(
        spatial_dims=3,
        data_range=1.0,
        kernel_size=kernel_size,
        weights=ms_ssim_weights(tuple(a.shape[2:]), kernel_size),
        reduction="none",
    )
    values = [
        metric(y_pred=a[i : i + batch_size].float(), y=b[i : i + batch_size].float()).flatten()
        for i in range(0, a.shape[0], batch_size)
    ]
    return torch.cat(values).cpu().numpy().astype(np.float64)


def random_pairs(n: int, n_pairs: int, seed: int) -> np.ndarray:
    """Up to ``n_pairs`` distinct unordered index pairs (all of them when there are fewer)."""
    all_pairs = np.array([(i, j) for i in range(n) for j in range(i + 1, n)], dtype=np.int64)
    if len(all_pairs) <= n_pairs:
        return all_pairs
    rng = np.random.default_rng(seed)
    return all_pairs[np.sort(rng.choice(len(all_pairs), size=n_pairs, replace=False))]


def diversity(volumes: torch.Tensor, n_pairs: int, kernel_size: int, seed: int) -> float:
    """Mean MS-SSIM over random pairs of ``volumes`` (needs at least two)."""
    if volumes.shape[0] < 2:
        raise ValueError("diversity needs at least two volumes")
    pairs = random_pairs(volumes.shape[0], n_pairs, seed)
    values = paired_ms_ssim(volumes[pairs[:, 0]], volumes[pairs[:, 1]], kernel_size)
    return float(values.mean())


@torch.no_grad()
def reconstruct(
    autoencoder: nn.Module,
    volumes: torch.Tensor,
    device: torch.device,
    batch_size: int,
    to_model: Callable[[torch.Tensor], torch.Tensor] = lambda v: v,
    from_model: Callable[[torch.Tensor], torch.Tensor] = lambda v: v,
) -> torch.Tensor:
    """Autoencoder reconstructions (posterior mean), clipped to [0, 1], on the volumes' grid."""
    autoencoder = autoencoder.to(device).eval()
    outputs = []
    for i in range(0, volumes.shape[0], batch_size):
        batch = to_model(volumes[i : i + batch_size]).to(device)
        outputs.append(from_model(autoencoder.reconstruct(batch).float().cpu()).clamp(0, 1))
    return torch.cat(outputs)


def reconstruction_metrics(
    originals: torch.Tensor, reconstructions: torch.Tensor, kernel_size: int
) -> dict[str, float]:
    psnr = PSNRMetric(max_val=1.0, reduction="none")(y_pred=reconstructions, y=originals)
    return {
        "mae": float((reconstructions - originals).abs().mean()),
        "psnr_db": float(psnr.mean()),
        "ms_ssim": float(paired_ms_ssim(reconstructions, originals, kernel_size).mean()),
    }


def feature_network(seed: int) -> nn.Module:
    """MONAI's 3D ResNet-10 with fixed random weights, returning 512 pooled features."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # the usual ResNet stem (stride-2 first convolution): MONAI's default stride 1 makes
        # the 7x7x7 stem cost ~9x more for the same pooled features
        net = resnet10(
            spatial_dims=3,
            n_input_channels=1,
            num_classes=1,
            feed_forward=False,
            conv1_t_stride=2,
        )
    return net.eval()


@torch.no_grad()
def extract_features(
    network: nn.Module, volumes: torch.Tensor, device: torch.device, batch_size: int
) -> torch.Tensor:
    network = network.to(device).eval()
    features = [
        network(volumes[i : i + batch_size].float().to(device)).float().cpu()
        for i in range(0, volumes.shape[0], batch_size)
    ]
    return torch.cat(features).double()


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """MONAI's Fréchet distance between two ``[N, F]`` feature sets.

    With fewer scans than features the covariances are singular; MONAI then regularises the
    matrix square root itself, so SciPy's warning about it is expected and silenced here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LinAlgWarning)
        warnings.filterwarnings("ignore", message=".*`disp` argument is deprecated")
        return float(FIDMetric()(features_a, features_b))


def flatten_for_distance(volumes: torch.Tensor, downsample: int) -> torch.Tensor:
    """``[N, V]`` float32 rows, average-pooled by ``downsample`` along each axis first."""
    volumes = volumes.float()
    if downsample > 1:
        volumes = F.avg_pool3d(volumes, kernel_size=downsample, stride=downsample)
    return volumes.flatten(1)


def nearest_neighbours(
    queries: torch.Tensor, references: torch.Tensor, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the RMS distance to and index of its nearest reference row."""
    distances, indices = [], []
    scale = float(queries.shape[1]) ** 0.5
    for i in range(0, queries.shape[0], chunk):
        d = torch.cdist(queries[i : i + chunk], references) / scale
        best = d.min(dim=1)
        distances.append(best.values)
        indices.append(best.indices)
    return torch.cat(distances).numpy().astype(np.float64), torch.cat(indices).numpy()


@dataclass(frozen=True)
class MemorisationResult:
    sample_distance: np.ndarray  # each sample's RMS distance to its nearest training scan
    sample_neighbour: np.ndarray  # index (into the training scans) of that scan
    heldout_distance: np.ndarray  # each held-out real scan's distance to its nearest training scan
    threshold: float
    flagged: np.ndarray  # bool per sample

    def summary(self) -> dict[str, float | int]:
        return {
            "threshold_rms": self.threshold,
            "flagged": int(self.flagged.sum()),
            "flagged_fraction": float(self.flagged.mean()),
            "sample_nn_rms_median": float(np.median(self.sample_distance)),
            "sample_nn_rms_min": float(self.sample_distance.min()),
            "heldout_nn_rms_median": float(np.median(self.heldout_distance)),
            "heldout_nn_rms_min": float(self.heldout_distance.min()),
        }


def memorisation_check(
    samples: torch.Tensor, training: torch.Tensor, heldout: torch.Tensor, quantile: float
) -> MemorisationResult:
    """Flag samples nearer to a training scan than held-out real scans get (rows from
    :func:`flatten_for_distance`)."""
    sample_distance, sample_neighbour = nearest_neighbours(samples, training)
    heldout_distance, _ = nearest_neighbours(heldout, training)
    threshold = float(np.quantile(heldout_distance, quantile))
    return MemorisationResult(
        sample_distance,
        sample_neighbour,
        heldout_distance,
        threshold,
        sample_distance < threshold,
    )


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson r, or None when it is undefined (fewer than 3 points, or a constant series)."""
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def conditioning_agreement(requested: pd.DataFrame, measured: np.ndarray) -> dict[str, dict]:
    """How well the measured (CSF, brain) volumes of the samples follow the requested ones."""
    result = {}
    for column, name in enumerate(("csf_volume_ml", "brain_volume_ml")):
        asked = requested[name].to_numpy(dtype=np.float64)
        got = measured[:, column]
        slope = float(np.polyfit(asked, got, 1)[0]) if np.std(asked) > 0 else None
        result[name] = {
            "pearson_r": pearson(asked, got),
            "slope": slope,
            "mean_abs_error_ml": float(np.abs(got - asked).mean()),
            "mean_error_ml": float((got - asked).mean()),
            "requested_mean_ml": float(asked.mean()),
            "measured_mean_ml": float(got.mean()),
        }
    return result
