"""QC: the outlier rule, per-site montages of preprocessed scans and the per-scan QC table."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from neurotransfer.atomic import atomic_directory
from neurotransfer.config import DataSettings
from neurotransfer.data.cache import load_cached_volume

MONTAGE_SCANS = 12  # scans per site montage (the lowest template correlations first)
MONTAGE_COLUMNS = 3


def robust_low_outliers(values: pd.Series, threshold: float = 3.5) -> pd.Series:
    """Low outliers by the median/MAD modified z-score (Iglewicz and Hoaglin's 3.5)."""
    median = values.median()
    mad = (values - median).abs().median()
    if not mad > 0:
        return pd.Series(False, index=values.index)
    return 0.6745 * (values - median) / mad < -threshold


def qc_outliers(scans: pd.DataFrame, min_template_correlation: float) -> pd.Series:
    """Which scans are QC outliers, among those not excluded by their ``split``.

    An outlier's template correlation is below `min_template_correlation` or a low outlier
    within its dataset (:func:`robust_low_outliers`).
    """
    ok = scans["split"] != "excluded"
    outliers = pd.Series(False, index=scans.index)
    outliers.loc[ok] = (scans.loc[ok, "qc_template_corr"] < min_template_correlation) | scans[
        ok
    ].groupby("dataset")["qc_template_corr"].transform(robust_low_outliers)
    return outliers


def orthogonal_views(volume: np.ndarray) -> np.ndarray:
    """Mid-sagittal, mid-coronal and mid-axial slices side by side, for ``imshow(origin="lower")``.

    Rows of the result run inferior to superior (sagittal, coronal) or posterior to anterior
    (axial); each slice is padded at the top to the tallest one.
    """
    i, j, k = (n // 2 for n in volume.shape)
    views = [volume[i].T, volume[:, j].T, volume[:, :, k].T]
    height = max(v.shape[0] for v in views)
    padded = [np.pad(v, ((0, height - v.shape[0]), (0, 0))) for v in views]
    return np.concatenate(padded, axis=1)


def write_qc(
    manifest: pd.DataFrame, cache_dir: Path, qc_dir: Path, settings: DataSettings
) -> float:
    """Write ``qc_table.csv`` and ``montage_<dataset>_<site>.png`` into `qc_dir` atomically.

    `cache_dir` is where the arrays are now (the stage's temporary folder); manifest paths
    are relative to the repository root and start with ``processed_dir``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = time.perf_counter()
    with atomic_directory(qc_dir) as out:
        manifest.to_csv(out / "qc_table.csv", index=False, float_format="%.6g")
        usable = manifest[manifest["split"] != "excluded"]
        for (dataset, site), group in usable.groupby(["dataset", "site"], sort=True):
            # Worst first: the montage is where a person checks the flagged scans.
            chosen = group.sort_values("qc_template_corr").head(MONTAGE_SCANS)
            rows = -(-len(chosen) // MONTAGE_COLUMNS)
            columns = min(len(chosen), MONTAGE_COLUMNS)
            fig, axes = plt.subplots(
                rows, columns, figsize=(3.2 * columns, 1.5 * rows + 0.4), squeeze=False
            )
            for ax in axes.flat:
                ax.set_axis_off()
            for ax, (_, scan) in zip(axes.flat, chosen.iterrows(), strict=False):
                relative = Path(scan["path"]).relative_to(settings.processed_dir)
                volume = np.asarray(load_cached_volume(cache_dir / relative), dtype=np.float32)
                ax.imshow(orthogonal_views(volume), origin="lower", cmap="gray")
                outlier = bool(scan["qc_outlier"])
                ax.set_title(
                    f"{scan['scan_id']}  r={scan['qc_template_corr']:.2f}"
                    + ("  OUTLIER" if outlier else ""),
                    fontsize=7,
                    color="red" if outlier else "black",
                )
            fig.suptitle(
                f"{dataset} / {site}: {len(chosen)} of {len(group)} scans, lowest template "
                "correlation first (sagittal, coronal, axial; RAS)",
                fontsize=8,
            )
            fig.tight_layout()
            fig.savefig(out / f"montage_{dataset}_{site}.png", dpi=80)
            plt.close(fig)
    return time.perf_counter() - start
