"""Per-site montage PNGs: three orthogonal mid-slices of several subjects, so a person can see
what each simulated scanner produces."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

VIEW_NAMES = ("sagittal", "coronal", "axial")


def write_site_montage(
    path: Path, site: str, subjects: list[tuple[str, list[np.ndarray]]], voxel_size: tuple
) -> Path:
    """One row per subject, columns sagittal/coronal/axial, shown in RAS voxel order
    (image right = subject anterior/right, image top = superior/anterior)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not subjects:
        raise ValueError(f"site {site!r} has no subjects to show in its montage")
    rows = len(subjects)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.4 * rows), squeeze=False)
    # Display aspect from the voxel size, so anisotropic sites are not squashed.
    sx, sy, sz = voxel_size
    aspects = (sz / sy, sz / sx, sy / sx)
    for row, (participant, slices) in enumerate(subjects):
        high = float(np.percentile(np.concatenate([s.ravel() for s in slices]), 99.5)) or 1.0
        for col, (image, aspect) in enumerate(zip(slices, aspects, strict=True)):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", origin="lower", vmin=0.0, vmax=high, aspect=aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(VIEW_NAMES[col], fontsize=9)
            if col == 0:
                ax.set_ylabel(participant, fontsize=8)
    fig.suptitle(f"{site} (voxel {sx:g}x{sy:g}x{sz:g} mm, shown in RAS)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=80, metadata={"Software": None})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path
