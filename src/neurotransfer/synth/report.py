"""Pictures of the synthetic data for ``reports/synthetic/``.

Volumes are ``[x, y, z]`` arrays on a RAS grid (the ``preprocess`` convention). Slices are
drawn in the neurological convention: x grows to the right of the picture (the subject's right on
the viewer's right), y or z grows upwards.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

VIEWS = ("axial", "coronal", "sagittal")


def mid_slice(volume: np.ndarray, view: str) -> np.ndarray:
    """The central slice of a ``[x, y, z]`` volume, transposed for ``imshow(origin='lower')``."""
    x, y, z = (s // 2 for s in volume.shape)
    if view == "axial":
        return volume[:, :, z].T
    if view == "coronal":
        return volume[:, y, :].T
    if view == "sagittal":
        return volume[x, :, :].T
    raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")


def _show(ax: plt.Axes, image: np.ndarray, title: str | None = None) -> None:
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, origin="lower", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _save(fig: plt.Figure, path: Path, title: str | None = None) -> None:
    """Save `fig` to `path` at the reports' resolution (under an overall `title`) and close it."""
    if title is not None:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def age_spread_indices(ages: np.ndarray, count: int) -> np.ndarray:
    """Indices of ``count`` items whose ages are evenly spread over the range, youngest first."""
    order = np.argsort(ages, kind="stable")
    picks = np.unique(np.round(np.linspace(0, len(order) - 1, min(count, len(order)))))
    return order[picks.astype(int)]


def samples_by_age(volumes: np.ndarray, table: pd.DataFrame, count: int, path: Path) -> None:
    """Mid-slices in three views (rows) of samples across the age range (columns)."""
    picks = age_spread_indices(table["age"].to_numpy(), count)
    fig, axes = plt.subplots(3, len(picks), figsize=(1.6 * len(picks), 5.2), squeeze=False)
    for column, index in enumerate(picks):
        row = table.iloc[index]
        title = f"{row['age']:.0f} y {row['sex']}\nCSF {row['csf_volume_ml']:.0f} ml"
        for r, view in enumerate(VIEWS):
            _show(axes[r, column], mid_slice(volumes[index], view), title if r == 0 else None)
    for r, view in enumerate(VIEWS):
        axes[r, 0].set_ylabel(view, fontsize=8)
    _save(fig, path, "Synthetic volumes across the requested age range")


def real_vs_synthetic(
    real: np.ndarray,
    real_table: pd.DataFrame,
    samples: np.ndarray,
    sample_table: pd.DataFrame,
    count: int,
    path: Path,
) -> None:
    """Held-out real scans (top) next to the sample of the same sex nearest in age (bottom)."""
    picks = age_spread_indices(real_table["age"].to_numpy(), count)
    fig, axes = plt.subplots(2, len(picks), figsize=(1.6 * len(picks), 3.8), squeeze=False)
    for column, index in enumerate(picks):
        row = real_table.iloc[index]
        same_sex = np.flatnonzero(sample_table["sex"].to_numpy() == row["sex"])
        candidates = same_sex if same_sex.size else np.arange(len(sample_table))
        ages = sample_table["age"].to_numpy()[candidates]
        match = candidates[int(np.argmin(np.abs(ages - row["age"])))]
        _show(
            axes[0, column],
            mid_slice(real[index], "axial"),
            f"real {row['age']:.0f} y {row['sex']}",
        )
        _show(
            axes[1, column],
            mid_slice(samples[match], "axial"),
            f"synth {sample_table['age'].iloc[match]:.0f} y {sample_table['sex'].iloc[match]}",
        )
    _save(fig, path, "Held-out real scans (top) and age/sex-matched samples (bottom)")


def reconstructions(
    originals: np.ndarray, reconstructed: np.ndarray, count: int, path: Path
) -> None:
    """Held-out scans, their autoencoder reconstructions and absolute errors (axial)."""
    count = min(count, len(originals))
    fig, axes = plt.subplots(3, count, figsize=(1.6 * count, 5.2), squeeze=False)
    for column in range(count):
        _show(axes[0, column], mid_slice(originals[column], "axial"))
        _show(axes[1, column], mid_slice(reconstructed[column], "axial"))
        error = np.abs(reconstructed[column] - originals[column])
        _show(axes[2, column], mid_slice(error, "axial"))
    for r, label in enumerate(("held-out", "reconstruction", "|error|")):
        axes[r, 0].set_ylabel(label, fontsize=8)
    _save(fig, path, "Autoencoder on held-out pool scans")


def conditioning_scatter(requested: pd.DataFrame, measured: np.ndarray, path: Path) -> None:
    """Measured against requested CSF and brain volume, with the identity line."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    for ax, column, name, label in zip(
        axes,
        (0, 1),
        ("csf_volume_ml", "brain_volume_ml"),
        ("enclosed CSF", "brain"),
        strict=True,
    ):
        asked, got = requested[name].to_numpy(), measured[:, column]
        ax.scatter(asked, got, s=8, alpha=0.6)
        lo, hi = float(min(asked.min(), got.min())), float(max(asked.max(), got.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
        r = np.corrcoef(asked, got)[0, 1] if np.std(asked) > 0 and np.std(got) > 0 else np.nan
        ax.set_title(f"{label} volume (r = {r:.2f})", fontsize=10)
        ax.set_xlabel("requested (ml)")
        ax.set_ylabel("measured on sample (ml)")
    _save(fig, path)


def memorisation_histogram(
    sample_distance: np.ndarray, heldout_distance: np.ndarray, threshold: float, path: Path
) -> None:
    """Nearest-training-scan distances of samples and of held-out real scans."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(0.0, float(max(sample_distance.max(), heldout_distance.max())) * 1.05, 40)
    ax.hist(sample_distance, bins=bins, alpha=0.6, density=True, label="samples")
    ax.hist(heldout_distance, bins=bins, alpha=0.6, density=True, label="held-out real scans")
    ax.axvline(threshold, color="red", lw=1, label="flag threshold")
    ax.set_xlabel("RMS distance to the nearest training scan")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    _save(fig, path)
