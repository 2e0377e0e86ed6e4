"""Small brain-like phantoms whose ventricles grow and brain shrinks with age.

The synth tests must not depend on the `cohort`/`preprocess` code, so they make their own
arrays: brain-masked, intensities in [0, 1] (CSF dark, grey matter mid, white matter bright)
like `preprocess` writes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

CSF, GREY, WHITE = 0.1, 0.55, 0.9


def phantom_volume(
    shape: tuple[int, int, int],
    age: float,
    sex: str,
    rng: np.random.Generator,
    noise: float = 0.02,
) -> np.ndarray:
    """One phantom: an ellipsoidal brain with a central ventricle that grows with age."""
    ageing = np.clip((age - 20.0) / 70.0, 0.0, 1.0)
    head = 1.0 if sex == "M" else 0.94
    axes = [np.linspace(-1.0, 1.0, n) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    radius = np.sqrt((x / 0.8) ** 2 + (y / 0.88) ** 2 + (z / 0.78) ** 2) / head
    ventricle = np.sqrt((x / 0.5) ** 2 + (y / 0.8) ** 2 + (z / 0.5) ** 2)
    volume = np.zeros(shape, dtype=np.float32)
    volume[radius < 1.0 - 0.1 * ageing] = GREY
    volume[radius < 0.65 - 0.05 * ageing] = WHITE
    volume[ventricle < 0.2 + 0.3 * ageing] = CSF
    brain = volume > 0
    volume[brain] += rng.normal(0.0, noise, int(brain.sum())).astype(np.float32)
    return np.clip(volume, 0.0, 1.0)


def write_phantom_pool(
    root: Path,
    n_pool: int,
    shape: tuple[int, int, int],
    seed: int = 0,
    n_downstream: int = 2,
) -> Path:
    """Write `data/processed/manifest.csv` and fp16 arrays under `root`; return the manifest.

    Downstream rows point at arrays that do not exist: reading them would fail, so a test that
    passes proves the pool reader never touches downstream subjects.
    """
    rng = np.random.default_rng(seed)
    out = root / "data" / "processed"
    (out / "arrays").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_pool):
        age = float(rng.uniform(20, 90))
        sex = "M" if i % 2 else "F"
        rel = f"data/processed/arrays/pool-{i:04d}.npy"
        np.save(root / rel, phantom_volume(shape, age, sex, rng).astype(np.float16))
        rows.append(
            dict(
                subject_id=f"pool{i:04d}",
                dataset="pool",
                site="siteA",
                role="pool",
                age=round(age, 1),
                sex=sex,
                diagnosis="CN",
                split="pool",
                path=rel,
                exclusion_reason="",
            )
        )
    for i in range(n_downstream):
        rows.append(
            dict(
                subject_id=f"adni{i:04d}",
                dataset="adni",
                site="siteB",
                role="downstream",
                age=70.0,
                sex="F",
                diagnosis="AD",
                split="test",
                path=f"data/processed/arrays/missing-adni-{i}.npy",
                exclusion_reason="",
            )
        )
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def drop_pool_role(root: Path) -> Path:
    """Make the processed manifest's pool subjects downstream training subjects: data with no
    upstream pool, like IXI-HH. Returns the manifest's path."""
    manifest = root / "data" / "processed" / "manifest.csv"
    rows = pd.read_csv(manifest, dtype=str)
    rows["role"], rows["split"] = "downstream", "train"
    rows.to_csv(manifest, index=False)
    return manifest
