"""QC outputs: per-site montages of preprocessed scans and the per-scan QC table."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from neurotransfer.atomic import atomic_directory
from neurotransfer.config import DataSettings
from neurotransfer.data.cache import load_cached_volume

MONTAGE_SCANS = 12  # scans per site montage (the lowest template correlations first)


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
            fig, axes = plt.subplots(len(chosen), 3, figsize=(6, 2 * len(chosen)), squeeze=False)
            for row, (_, scan) in zip(axes, chosen.iterrows(), strict=True):
                relative = Path(scan["path"]).relative_to(settings.processed_dir)
                volume = np.asarray(load_cached_volume(cache_dir / relative), dtype=np.float32)
                centre = [n // 2 for n in volume.shape]
                views = (volume[centre[0]], volume[:, centre[1]], volume[:, :, centre[2]])
                for ax, view in zip(row, views, strict=True):
                    ax.imshow(view.T, origin="lower", cmap="gray")
                    ax.set_axis_off()
                flag = " OUTLIER" if scan["qc_outlier"] else ""
                row[0].set_title(
                    f"{scan['scan_id']} r={scan['qc_template_corr']:.2f}{flag}",
                    fontsize=7,
                    loc="left",
                )
            fig.suptitle(f"{dataset} / {site}: sagittal, coronal, axial (RAS)", fontsize=9)
            fig.tight_layout()
            fig.savefig(out / f"montage_{dataset}_{site}.png", dpi=80)
            plt.close(fig)
    return time.perf_counter() - start
