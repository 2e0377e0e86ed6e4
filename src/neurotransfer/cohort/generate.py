"""Generate the phantom cohort: who is scanned where, their anatomy, their scans, the truth.

One subject, in order: draw the latents (:mod:`effects`) and the head warp (:mod:`warp`), apply
the atrophy to the template tissue maps, measure the true volumes, synthesise the T1 with the
site's tissue contrast, scan it at the site (:mod:`scanner`) and store it as the site does.
Effect sizes are documented in :mod:`neurotransfer.cohort.effects`.

Site confounding comes from the site-specific age distributions and patient fractions in
``cohort.sites``: e.g. in the default cohort the ADNI-like siteD scans older people and more
patients than siteA, as real multi-site data do.

Every random draw comes from a generator seeded by (seed, dataset) for the demographics,
(seed, dataset, subject index) for a subject, or (seed, site) for a site's bias pattern, so the
cohort is the same whatever the worker scheduling, and growing one dataset does not change
another.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
from numpy.typing import NDArray
from scipy import stats

from neurotransfer.cohort import anatomy as anatomy_module
from neurotransfer.cohort import effects, scanner
from neurotransfer.cohort.anatomy import Anatomy, build_anatomy
from neurotransfer.cohort.warp import SubjectWarp, draw_warp
from neurotransfer.config import CohortSettings, SettingsError

log = logging.getLogger(__name__)

MONTAGE_SUBJECTS_PER_SITE = 6
# World point (MNI mm) the montage slices pass through: coronal through the hippocampi, axial
# through the lateral ventricles and basal ganglia, sagittal on the midline.
MONTAGE_POINT_MM = (0.0, -20.0, 8.0)
# participants.tsv value for an unknown diagnosis (BIDS "n/a"; pandas reads it as missing).
UNKNOWN = "n/a"


@dataclass(frozen=True)
class SubjectPlan:
    """Who a subject is and where they are scanned (drawn before any image is made)."""

    dataset: str
    index: int
    participant_id: str
    site: str
    age: float
    sex: str
    diagnosis: str  # the true group: CN, AD or PD (pool subjects are all CN)
    relative_path: str  # the T1w file, relative to the cohort output folder
    montage: bool  # whether its slices go into the site's montage


class _Demographics(NamedTuple):
    """A subject's draws, before the shuffle gives it a number."""

    site: str
    age: float
    sex: str
    diagnosis: str


def _stable_key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def plan_cohort(cohort: CohortSettings) -> list[SubjectPlan]:
    """Demographics of every subject: site allocation, age, sex and diagnosis per site mix.

    A dataset's subjects are split evenly over its sites; ages follow the site's normal
    distribution truncated to the dataset's age range; a downstream dataset's patients are the
    site's ``patient_fraction`` of its subjects. Subject numbers are shuffled so that they do
    not reveal the site.
    """
    plans: list[SubjectPlan] = []
    montage_count: dict[str, int] = dict.fromkeys(cohort.sites, 0)
    for dataset, spec in cohort.datasets.items():
        rng = np.random.default_rng([cohort.seed, _stable_key(dataset)])
        n_sites = len(spec.sites)
        rows: list[_Demographics] = []
        for k, site_name in enumerate(spec.sites):
            site = cohort.sites[site_name]
            n_site = spec.n_subjects // n_sites + (k < spec.n_subjects % n_sites)
            low, high = spec.age_range
            ages = stats.truncnorm.rvs(
                (low - site.age_mean) / site.age_sd,
                (high - site.age_mean) / site.age_sd,
                loc=site.age_mean,
                scale=site.age_sd,
                size=n_site,
                random_state=rng,
            )
            n_patients = 0
            if spec.disease != "none":  # rounded half up
                n_patients = int(np.floor(site.patient_fraction * n_site + 0.5))
            diagnoses = rng.permutation(
                np.array(["CN"] * (n_site - n_patients) + [spec.disease] * n_patients)
            )
            sexes = np.where(rng.random(n_site) < 0.5, "M", "F")
            for age, sex, diagnosis in zip(ages, sexes, diagnoses, strict=True):
                # ages as a participants table gives them: 0.1 year (the truth uses the same)
                rows.append(
                    _Demographics(
                        site_name,
                        round(float(np.clip(age, low, high)), 1),
                        str(sex),
                        str(diagnosis),
                    )
                )
        order = rng.permutation(len(rows))
        width = max(4, len(str(spec.n_subjects)))
        for index, row_index in enumerate(order):
            person = rows[row_index]
            participant = f"sub-{dataset}{index + 1:0{width}d}"
            suffix = ".nii.gz" if cohort.sites[person.site].compressed else ".nii"
            montage = montage_count[person.site] < MONTAGE_SUBJECTS_PER_SITE
            montage_count[person.site] += montage
            plans.append(
                SubjectPlan(
                    dataset=dataset,
                    index=index,
                    participant_id=participant,
                    site=person.site,
                    age=person.age,
                    sex=person.sex,
                    diagnosis=person.diagnosis,
                    relative_path=f"{dataset}/{participant}/anat/{participant}_T1w{suffix}",
                    montage=montage,
                )
            )
    # e.g. dataset "a1" and a dataset "a" of 10000+ subjects would both make sub-a10001
    clashes = sorted(pid for pid, n in Counter(p.participant_id for p in plans).items() if n > 1)
    if clashes:
        raise SettingsError(
            f"cohort.datasets: dataset names give clashing participant ids {clashes[:5]}; "
            "rename a dataset"
        )
    return plans


def subject_rng(plan: SubjectPlan, cohort: CohortSettings) -> np.random.Generator:
    """The subject's own random stream: (seed, dataset, index), whatever the scheduling."""
    return np.random.default_rng([cohort.seed, _stable_key(plan.dataset), plan.index + 1])


@dataclass
class SubjectAnatomy:
    """A subject's anatomy before scanning: latents, head warp, tissue maps, true volumes."""

    latents: effects.Latents
    warp: SubjectWarp
    tissues: effects.Tissues
    volumes: dict[str, float]


def subject_anatomy(
    plan: SubjectPlan, cohort: CohortSettings, anatomy: Anatomy, rng: np.random.Generator
) -> SubjectAnatomy:
    """Draw the subject's latents and warp from ``rng`` and apply them to the template."""
    latents = effects.draw_latents(plan.age, plan.sex, plan.diagnosis, cohort.atrophy_scale, rng)
    warp = draw_warp(rng, latents.head_scale, anatomy)
    tissues = effects.apply_effects(anatomy, latents)
    volumes = effects.true_volumes(anatomy, tissues, warp.volume_ratio_on_template(anatomy))
    return SubjectAnatomy(latents=latents, warp=warp, tissues=tissues, volumes=volumes)


@dataclass
class SubjectScan:
    """One simulated subject: the stored image, its ground-truth row, and montage slices."""

    image: nib.Nifti1Image
    truth: dict[str, Any]
    montage_slices: list[NDArray[np.float32]] = field(default_factory=list)


def simulate_subject(plan: SubjectPlan, cohort: CohortSettings, anatomy: Anatomy) -> SubjectScan:
    """Simulate one subject's scan (deterministic in the cohort seed and the subject's index)."""
    site = cohort.sites[plan.site]
    rng = subject_rng(plan, cohort)
    subject = subject_anatomy(plan, cohort, anatomy, rng)
    jitter = 1.0 + scanner.TISSUE_JITTER_SD * rng.standard_normal(3)
    means = scanner.tissue_intensities(site, subject.latents.gm_wm_contrast_factor)
    means["gm"] *= jitter[0]
    means["wm"] *= jitter[1]
    means["csf"] *= jitter[2]
    tissues = subject.tissues
    t1 = scanner.synthesize_t1(anatomy, tissues.gm, tissues.wm, tissues.csf, means)
    grid = scanner.site_grid(anatomy, site.voxel_size)
    bias = scanner.site_bias_pattern(plan.site, cohort.seed, anatomy)
    image = scanner.acquire(t1, anatomy, subject.warp, grid, site, bias, rng)
    img = scanner.to_nifti(image, grid.affine, site)

    truth = {
        "participant_id": plan.participant_id,
        "dataset": plan.dataset,
        "site": plan.site,
        "age": plan.age,
        "sex": plan.sex,
        "diagnosis": plan.diagnosis,
        "path": plan.relative_path,
        **{k: round(v, 5) for k, v in asdict(subject.latents).items()},
        "deformation_rms_mm": round(subject.warp.displacement_rms_mm(anatomy), 4),
        **{f"{tissue}_intensity": round(means[tissue], 5) for tissue in ("gm", "wm", "csf")},
        **subject.volumes,
    }
    slices = _orthogonal_slices(image, grid) if plan.montage else []
    return SubjectScan(image=img, truth=truth, montage_slices=slices)


def _orthogonal_slices(image_ras: NDArray[np.float32], grid: scanner.SiteGrid) -> list[NDArray]:
    """Sagittal, coronal and axial slices through MONTAGE_POINT_MM (rows: S or A, cols: A or R)."""
    i, j, k = (
        int(np.clip(np.rint((MONTAGE_POINT_MM[d] - grid.axes[d][0]) / grid.affine[d, d]), 0, n - 1))
        for d, n in enumerate(grid.shape)
    )
    return [image_ras[i, :, :].T.copy(), image_ras[:, j, :].T.copy(), image_ras[:, :, k].T.copy()]


# Worker state, set once per process by the pool initialiser.
_WORKER: dict[str, Any] = {}


def _init_worker(cohort: CohortSettings, out_root: str, anatomy: Anatomy) -> None:
    _WORKER.update(cohort=cohort, out_root=Path(out_root), anatomy=anatomy)


def _simulate_and_write(plan: SubjectPlan) -> tuple[dict[str, Any], list[NDArray]]:
    cohort: CohortSettings = _WORKER["cohort"]
    scan = simulate_subject(plan, cohort, _WORKER["anatomy"])
    path = _WORKER["out_root"] / plan.relative_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(scanner.nifti_bytes(scan.image, cohort.sites[plan.site].compressed))
    return scan.truth, scan.montage_slices


def _run_all(
    plans: list[SubjectPlan], cohort: CohortSettings, out_root: Path, anatomy: Anatomy
) -> Iterator[tuple[dict[str, Any], list[NDArray]]]:
    workers = min(cohort.workers, len(plans))
    if workers <= 1:
        _init_worker(cohort, str(out_root), anatomy)
        yield from map(_simulate_and_write, plans)
        return
    # Forked workers share the anatomy built here instead of each loading nilearn's files.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(cohort, str(out_root), anatomy),
    ) as pool:
        yield from pool.map(_simulate_and_write, plans, chunksize=4)


@dataclass
class CohortResult:
    plans: list[SubjectPlan]
    truth_rows: list[dict[str, Any]]
    montage_slices: dict[str, list[tuple[str, list[NDArray]]]]  # site -> [(label, slices)]


def write_cohort(cohort: CohortSettings, out_root: Path) -> CohortResult:
    """Write every dataset's BIDS folder under ``out_root``; return the truth and montage data."""
    plans = plan_cohort(cohort)
    anatomy = build_anatomy(cohort.template_resolution_mm)
    out_root.mkdir(parents=True, exist_ok=True)
    truth_rows: list[dict[str, Any]] = []
    montage: dict[str, list[tuple[str, list[NDArray]]]] = {name: [] for name in cohort.sites}
    for plan, (truth, slices) in zip(
        plans, _run_all(plans, cohort, out_root, anatomy), strict=True
    ):
        truth_rows.append(truth)
        if slices:
            label = f"{plan.participant_id}\n{plan.age:.0f} y {plan.sex} {plan.diagnosis}"
            montage[plan.site].append((label, slices))
    for dataset, spec in cohort.datasets.items():
        write_bids_metadata(out_root / dataset, dataset, spec.role, spec.disease, plans)
    return CohortResult(plans=plans, truth_rows=truth_rows, montage_slices=montage)


PARTICIPANTS_SIDECAR = {
    "participant_id": {"Description": "subject label, unique across the phantom datasets"},
    "age": {"Description": "age at scan", "Units": "years"},
    "sex": {"Description": "sex", "Levels": {"M": "male", "F": "female"}},
    "diagnosis": {
        "Description": "clinical group; n/a where the dataset records none (the upstream pool)",
        "Levels": {"CN": "cognitively normal", "AD": "Alzheimer's disease", "PD": "Parkinson's"},
    },
    "site": {"Description": "simulated scanner/site"},
}


def write_bids_metadata(
    folder: Path, dataset: str, role: str, disease: str, plans: list[SubjectPlan]
) -> None:
    """dataset_description.json, participants.tsv and participants.json of one dataset.

    The upstream pool records age and sex only, like UK Biobank: its diagnosis is ``n/a``
    (all its subjects are healthy, which the ground truth says).
    """
    folder.mkdir(parents=True, exist_ok=True)
    description = {
        "Name": f"neurotransfer phantom cohort: {dataset}",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "GeneratedBy": [
            {"Name": "neurotransfer cohort", "Description": "MNI152-based synthetic T1 phantom"}
        ],
        "neurotransfer": {"role": role, "disease": disease},
    }
    (folder / "dataset_description.json").write_text(
        json.dumps(description, indent=2) + "\n", encoding="utf-8"
    )
    (folder / "participants.json").write_text(
        json.dumps(PARTICIPANTS_SIDECAR, indent=2) + "\n", encoding="utf-8"
    )
    lines = ["participant_id\tage\tsex\tdiagnosis\tsite"]
    for plan in plans:
        if plan.dataset == dataset:
            diagnosis = UNKNOWN if role == "pool" else plan.diagnosis
            lines.append(
                f"{plan.participant_id}\t{plan.age:.1f}\t{plan.sex}\t{diagnosis}\t{plan.site}"
            )
    (folder / "participants.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def site_truth(cohort: CohortSettings, anatomy: Anatomy) -> dict[str, Any]:
    """The true site parameters: as configured, plus what they imply (intensities, grid)."""
    truth = {}
    for name, site in cohort.sites.items():
        grid = scanner.site_grid(anatomy, site.voxel_size)
        truth[name] = {
            **site.model_dump(mode="json"),
            "tissue_intensity_young": scanner.tissue_intensities(site),
            "ras_grid_shape": list(grid.shape),
            "ras_grid_affine": grid.affine.round(6).tolist(),
            "bias_pattern_seed": [cohort.seed, _stable_key(name)],
            "datasets": [d for d, spec in cohort.datasets.items() if name in spec.sites],
        }
    return truth


def region_truth(anatomy: Anatomy) -> dict[str, Any]:
    """Region definitions, label values and effect sizes, for scoring against ground truth."""
    return {
        "template": "MNI152 2009c symmetric (nilearn), "
        f"{anatomy.resolution_mm:g} mm; labels in regions_mni.nii.gz",
        "labels": anatomy_module.REGION_LABELS,
        "ellipsoids_mm": {
            name: [asdict(e) for e in ellipsoids]
            for name, ellipsoids in anatomy_module.REGIONS.items()
        },
        "effect_sizes": {
            name: getattr(effects, name)
            for name in dir(effects)
            if name.isupper() and isinstance(getattr(effects, name), float | tuple | dict)
        },
    }


def write_ground_truth(
    folder: Path, cohort: CohortSettings, truth_rows: list[dict[str, Any]]
) -> None:
    """subjects.csv (latents and true volumes), sites.json, regions.json, regions_mni.nii.gz."""
    import pandas as pd

    anatomy = build_anatomy(cohort.template_resolution_mm)
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(truth_rows).to_csv(folder / "subjects.csv", index=False, float_format="%.6g")
    for name, content in (
        ("sites.json", site_truth(cohort, anatomy)),
        ("regions.json", region_truth(anatomy)),
    ):
        (folder / name).write_text(
            json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    labels = nib.Nifti1Image(anatomy.region_labels_full, anatomy.full_affine)
    labels.set_sform(anatomy.full_affine, code="mni")
    (folder / "regions_mni.nii.gz").write_bytes(scanner.nifti_bytes(labels, compressed=True))
