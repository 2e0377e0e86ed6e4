"""Per-site montage PNGs: three orthogonal slices of several subjects, so a person can see what
each simulated scanner produces (contrast, bias, noise, blur, resolution)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

VIEW_NAMES = ("sagittal", "coronal", "axial")


def write_site_montage(
    path: Path,
    site: str,
    subjects: list[tuple[str, list[NDArray[np.float32]]]],
    voxel_size: tuple[float, float, float],
) -> Path:
    """One row per subject (``(label, [sagittal, coronal, axial])``), written atomically.

    Slices are in RAS voxel order, as :func:`generate._orthogonal_slices` cuts them: sagittal
    rows run inferior->superior and columns posterior->anterior; coronal and axial columns run
    left->right (neurological convention). Display aspect follows the voxel size, so
    anisotropic sites are not squashed.
    """
    from matplotlib.figure import Figure

    if not subjects:
        raise ValueError(f"site {site!r} has no subjects to show in its montage")
    rows = len(subjects)
    fig = Figure(figsize=(7.5, 2.4 * rows))
    axes = fig.subplots(rows, 3, squeeze=False)
    sx, sy, sz = voxel_size
    aspects = (sz / sy, sz / sx, sy / sx)
    for row, (label, slices) in enumerate(subjects):
        high = float(np.percentile(np.concatenate([s.ravel() for s in slices]), 99.5)) or 1.0
        for col, (image, aspect) in enumerate(zip(slices, aspects, strict=True)):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", origin="lower", vmin=0.0, vmax=high, aspect=aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(VIEW_NAMES[col], fontsize=9)
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
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
    return path
