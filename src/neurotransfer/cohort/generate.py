"""Generate the phantom cohort: who is scanned where, their anatomy, their scans, the truth.

Effect sizes (all multiplied by ``cohort.atrophy_scale``; ``a = (age - 20) / 70`` in [0, 1]):

============================  ===========================================  ==================
effect                        model                                        at age 90 / in AD
============================  ===========================================  ==================
cortical GM thinning          GM -> CSF, fraction 0.18 a (+0.04 AD)        18 % (22 % AD)
ventricular enlargement       linear magnification 1 + 0.38 a^1.5          ~2.6x volume
                              (+0.10 AD severity)
medial-temporal GM loss       GM -> CSF, fraction 0.10 a^1.5 + 0.30 AD     10 % (+15-30 % AD)
PD putamen GM loss            GM -> CSF, fraction 0.03 a + 0.07 PD         3-7 %, subtle
PD midbrain tissue loss       GM+WM -> CSF, fraction 0.02 a + 0.05 PD      2-5 %, subtle
head size                     linear scale N(1.018, 0.03) M, N(0.982) F    ~11 % volume M vs F
shape                         smooth displacement, 5^3 control points      2 mm s.d.
============================  ===========================================  ==================

Disease severity is uniform in [0.5, 1] for each patient; each latent gets a little
subject-level noise. Site confounding comes from the site-specific age distributions and
patient fractions in ``cohort.sites``.

Every random draw comes from a generator seeded by (seed, dataset, subject index) or
(seed, dataset) or (seed, site), so the cohort is identical whatever the worker scheduling.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from neurotransfer.cohort import anatomy, scanner
from neurotransfer.config import CohortSettings

log = logging.getLogger(__name__)

DIAGNOSIS_LABEL = {"none": "CN", "AD": "AD", "PD": "PD"}
MONTAGE_SUBJECTS_PER_SITE = 6

# Effect sizes (see the module docstring).
CORTICAL_LOSS_PER_AGE = 0.18
CORTICAL_LOSS_AD = 0.04
VENTRICLE_GROWTH_PER_AGE = 0.38
VENTRICLE_GROWTH_AD = 0.10
MEDIAL_TEMPORAL_LOSS_PER_AGE = 0.10
MEDIAL_TEMPORAL_LOSS_AD = 0.30
PUTAMEN_LOSS_PER_AGE = 0.03
PUTAMEN_LOSS_PD = 0.07
MIDBRAIN_LOSS_PER_AGE = 0.02
MIDBRAIN_LOSS_PD = 0.05
HEAD_SCALE_MEAN = {"M": 1.018, "F": 0.982}
HEAD_SCALE_SD = 0.03
DEFORMATION_SD_MM = 2.0
DEFORMATION_CONTROL_POINTS = 5
LATENT_NOISE_SD = 0.015


@dataclass(frozen=True)
class SubjectPlan:
    """Who a subject is and where they are scanned (drawn before any image is made)."""

    dataset: str
    index: int
    participant_id: str
    site: str
    age: float
    sex: str
    diagnosis: str
    relative_path: str  # the T1w file, relative to the cohort output folder
    montage: bool  # whether its slices go into the site's montage


def _stable_key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def plan_cohort(cohort: CohortSettings) -> list[SubjectPlan]:
    """Demographics of every subject: site allocation, age, sex and diagnosis per site mix."""
    plans: list[SubjectPlan] = []
    montage_count: dict[str, int] = dict.fromkeys(cohort.sites, 0)
    for dataset, spec in cohort.datasets.items():
        rng = np.random.default_rng([cohort.seed, _stable_key(dataset)])
        n_sites = len(spec.sites)
        rows: list[tuple[str, float, str, str]] = []
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
            n_patients = 0 if spec.disease == "none" else round(site.patient_fraction * n_site)
            diagnoses = np.array(["CN"] * (n_site - n_patients) + [spec.disease] * n_patients)
            diagnoses = rng.permutation(diagnoses)
            sexes = np.where(rng.random(n_site) < 0.5, "M", "F")
            for age, sex, diagnosis in zip(ages, sexes, diagnoses, strict=True):
                rows.append((site_name, round(float(age), 1), str(sex), str(diagnosis)))
        # Shuffle so that subject numbers do not reveal the site.
        order = rng.permutation(len(rows))
        suffix = ".nii.gz"
        for index, row_index in enumerate(order):
            site_name, age, sex, diagnosis = rows[row_index]
            participant = f"sub-{dataset}{index + 1:04d}"
            suffix = ".nii.gz" if cohort.sites[site_name].compressed else ".nii"
            montage = montage_count[site_name] < MONTAGE_SUBJECTS_PER_SITE
            montage_count[site_name] += montage
            plans.append(
                SubjectPlan(
                    dataset=dataset,
                    index=index,
                    participant_id=participant,
                    site=site_name,
                    age=age,
                    sex=sex,
                    diagnosis=diagnosis,
                    relative_path=f"{dataset}/{participant}/anat/{participant}_T1w{suffix}",
                    montage=montage,
                )
            )
    return plans


@dataclass(frozen=True)
class Latents:
    """The true per-subject anatomy parameters (saved as ground truth)."""

    head_scale: float
    disease_severity: float
    cortical_gm_loss: float
    medial_temporal_gm_loss: float
    ventricle_magnification: float
    putamen_gm_loss: float
    midbrain_tissue_loss: float


def draw_latents(plan: SubjectPlan, scale: float, rng: np.random.Generator) -> Latents:
    ageing = float(np.clip((plan.age - 20.0) / 70.0, 0.0, 1.0))
    # Drawn for everyone, so that a subject's other draws (shape, noise) do not depend on the
    # diagnosis: the same index with another diagnosis is the same person with the disease.
    severity_draw = float(rng.uniform(0.5, 1.0))
    severity = severity_draw if plan.diagnosis in ("AD", "PD") else 0.0
    ad = severity if plan.diagnosis == "AD" else 0.0
    pd = severity if plan.diagnosis == "PD" else 0.0
    noise = LATENT_NOISE_SD * rng.standard_normal(5)

    def fraction(value: float) -> float:
        return float(np.clip(value, 0.0, 0.9))

    return Latents(
        head_scale=float(HEAD_SCALE_MEAN[plan.sex] + HEAD_SCALE_SD * rng.standard_normal()),
        disease_severity=severity,
        cortical_gm_loss=fraction(
            scale * (CORTICAL_LOSS_PER_AGE * ageing + CORTICAL_LOSS_AD * ad) + noise[0]
        ),
        medial_temporal_gm_loss=fraction(
            scale * (MEDIAL_TEMPORAL_LOSS_PER_AGE * ageing**1.5 + MEDIAL_TEMPORAL_LOSS_AD * ad)
            + noise[1]
        ),
        ventricle_magnification=float(
            max(
                1.0,
                1.0
                + scale * (VENTRICLE_GROWTH_PER_AGE * ageing**1.5 + VENTRICLE_GROWTH_AD * ad)
                + 2 * noise[2],
            )
        ),
        putamen_gm_loss=fraction(
            scale * (PUTAMEN_LOSS_PER_AGE * ageing + PUTAMEN_LOSS_PD * pd) + 0.3 * noise[3]
        ),
        midbrain_tissue_loss=fraction(
            scale * (MIDBRAIN_LOSS_PER_AGE * ageing + MIDBRAIN_LOSS_PD * pd) + 0.3 * noise[4]
        ),
    )


def subject_anatomy(
    latents: Latents,
    grid_mm: np.ndarray,
    template: anatomy.Template,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """Tissue maps on the given subject-space grid, region weights, and the displacement RMS."""
    displacement = DEFORMATION_SD_MM * anatomy.smooth_random_field(
        rng, grid_mm.shape[1:], DEFORMATION_CONTROL_POINTS, n_fields=3
    )
    warp = anatomy.Warp(latents.head_scale, displacement, latents.ventricle_magnification)
    source = anatomy.template_positions(grid_mm, warp, template).reshape(3, -1)
    coords = anatomy.template_voxel_coordinates(source, template)
    # Only positions that land near the template brain can hold tissue: compute those alone.
    keep = anatomy.near_brain(coords, template)
    source, coords = source[:, keep], coords[:, keep]
    gm, wm, brain = anatomy.sample_tissues(coords, template)
    regions = {
        "medial_temporal": anatomy.region_weight(anatomy.MEDIAL_TEMPORAL, source),
        "putamen": anatomy.region_weight(anatomy.PUTAMEN, source),
        "midbrain": anatomy.region_weight(anatomy.MIDBRAIN, source),
        "ventricles": anatomy.region_weight(anatomy.VENTRICLES, source),
    }
    deep = anatomy.region_weight(anatomy.DEEP_GREY, source)
    for name in ("medial_temporal", "putamen", "midbrain"):
        np.maximum(deep, regions[name], out=deep)
    cortex = 1.0 - deep

    gm_loss = (
        latents.cortical_gm_loss * cortex
        + latents.medial_temporal_gm_loss * regions["medial_temporal"]
        + latents.putamen_gm_loss * regions["putamen"]
        + latents.midbrain_tissue_loss * regions["midbrain"]
    )
    gm = gm * (1.0 - np.clip(gm_loss, 0.0, 0.9))
    wm = wm * (1.0 - latents.midbrain_tissue_loss * regions["midbrain"])
    csf = np.clip(brain - gm - wm, 0.0, 1.0)  # lost tissue becomes CSF inside the brain
    rms = float(np.sqrt((displacement**2).sum(axis=0).mean()))

    def on_grid(values: np.ndarray) -> np.ndarray:
        full = np.zeros(keep.shape, np.float32)
        full[keep] = values
        return full.reshape(grid_mm.shape[1:])

    tissues = {"gm": gm, "wm": wm, "csf": csf, "brain": brain}
    return (
        {name: on_grid(values) for name, values in tissues.items()},
        {name: on_grid(values) for name, values in regions.items()},
        rms,
    )


def true_volumes(
    tissues: dict[str, np.ndarray], regions: dict[str, np.ndarray], voxel_ml: float
) -> dict[str, float]:
    """Regional volumes in mL measured on the subject's own tissue maps."""
    gm, wm, csf = tissues["gm"], tissues["wm"], tissues["csf"]

    def ml(values: np.ndarray) -> float:
        return round(float(values.sum(dtype=np.float64)) * voxel_ml, 3)

    return {
        "gm_ml": ml(gm),
        "wm_ml": ml(wm),
        "csf_ml": ml(csf),
        "brain_ml": ml(gm + wm),
        "icv_ml": ml(tissues["brain"]),
        "medial_temporal_gm_ml": ml(gm * regions["medial_temporal"]),
        "ventricle_csf_ml": ml(csf * regions["ventricles"]),
        "putamen_gm_ml": ml(gm * regions["putamen"]),
        "midbrain_tissue_ml": ml((gm + wm) * regions["midbrain"]),
    }


# Worker state: the template and settings, sent once per process by the pool initialiser.
_WORKER: dict[str, Any] = {}


def _init_worker(cohort: CohortSettings, out_root: str) -> None:
    _WORKER["cohort"] = cohort
    _WORKER["template"] = anatomy.load_template(cohort.template_resolution_mm)
    _WORKER["out_root"] = Path(out_root)


def simulate_subject(
    plan: SubjectPlan, cohort: CohortSettings, template: anatomy.Template
) -> tuple[Any, dict[str, Any], list[np.ndarray]]:
    """One subject's NIfTI image, ground-truth row and (if in the montage) RAS mid-slices."""
    import nibabel as nib

    site = cohort.sites[plan.site]
    rng = np.random.default_rng([cohort.seed, _stable_key(plan.dataset), plan.index + 1])
    latents = draw_latents(plan, cohort.atrophy_scale, rng)
    affine, grid_mm = scanner.site_grid(template, tuple(site.voxel_size))
    tissues, regions, rms = subject_anatomy(latents, grid_mm, template, rng)
    image = scanner.acquire(tissues, plan.site, site, cohort.seed, template.spacing_mm, rng)
    img = scanner.to_nifti(image, affine, site)
    truth = {
        "participant_id": plan.participant_id,
        "dataset": plan.dataset,
        "site": plan.site,
        "age": plan.age,
        "sex": plan.sex,
        "diagnosis": plan.diagnosis,
        "path": plan.relative_path,
        **{k: round(v, 5) for k, v in asdict(latents).items()},
        "deformation_rms_mm": round(rms, 4),
        **true_volumes(tissues, regions, float(np.prod(site.voxel_size)) / 1000.0),
    }
    slices: list[np.ndarray] = []
    if plan.montage:
        canonical = np.asarray(nib.as_closest_canonical(img).dataobj, dtype=np.float32)
        centre = np.array(canonical.shape) // 2
        slices = [
            canonical[centre[0], :, :].T,
            canonical[:, centre[1], :].T,
            canonical[:, :, centre[2]].T,
        ]
    return img, truth, slices


def _generate_and_write(plan: SubjectPlan) -> tuple[dict[str, Any], list[np.ndarray]]:
    cohort: CohortSettings = _WORKER["cohort"]
    img, truth, slices = simulate_subject(plan, cohort, _WORKER["template"])
    path = _WORKER["out_root"] / plan.relative_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(scanner.nifti_bytes(img, cohort.sites[plan.site].compressed))
    return truth, slices


def _run_all(
    plans: list[SubjectPlan], cohort: CohortSettings, out_root: Path
) -> Iterator[tuple[dict[str, Any], list[np.ndarray]]]:
    if cohort.workers == 1 or len(plans) < 2:
        _init_worker(cohort, str(out_root))
        yield from map(_generate_and_write, plans)
        return
    # Forked workers inherit the template loaded here instead of each loading nilearn's files.
    anatomy.load_template(cohort.template_resolution_mm)
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(
        max_workers=cohort.workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(cohort, str(out_root)),
    ) as pool:
        yield from pool.map(_generate_and_write, plans, chunksize=4)


@dataclass
class CohortResult:
    truth_rows: list[dict[str, Any]]
    montage_slices: dict[str, list[tuple[str, list[np.ndarray]]]]  # site -> [(id, slices)]


def write_cohort(cohort: CohortSettings, out_root: Path) -> CohortResult:
    """Write every dataset's BIDS folder under ``out_root``; return the truth and montage data."""
    plans = plan_cohort(cohort)
    out_root.mkdir(parents=True, exist_ok=True)
    truth_rows: list[dict[str, Any]] = []
    montage: dict[str, list[tuple[str, list[np.ndarray]]]] = {name: [] for name in cohort.sites}
    for plan, (truth, slices) in zip(plans, _run_all(plans, cohort, out_root), strict=True):
        truth_rows.append(truth)
        if slices:
            montage[plan.site].append((plan.participant_id, slices))
    for dataset, spec in cohort.datasets.items():
        _write_bids_metadata(out_root / dataset, dataset, spec.role, spec.disease, plans)
    return CohortResult(truth_rows=truth_rows, montage_slices=montage)


PARTICIPANTS_SIDECAR = {
    "participant_id": {"Description": "subject label, unique across the phantom datasets"},
    "age": {"Description": "age at scan", "Units": "years"},
    "sex": {"Description": "sex", "Levels": {"M": "male", "F": "female"}},
    "diagnosis": {
        "Description": "clinical group",
        "Levels": {"CN": "cognitively normal", "AD": "Alzheimer's disease", "PD": "Parkinson's"},
    },
    "site": {"Description": "simulated scanner/site"},
}


def _write_bids_metadata(
    folder: Path, dataset: str, role: str, disease: str, plans: list[SubjectPlan]
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    description = {
        "Name": f"neurotransfer phantom cohort: {dataset}",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": "neurotransfer cohort"}],
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
            lines.append(
                f"{plan.participant_id}\t{plan.age:.1f}\t{plan.sex}\t{plan.diagnosis}\t{plan.site}"
            )
    (folder / "participants.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def site_truth(cohort: CohortSettings) -> dict[str, Any]:
    """The true site parameters (as configured, plus the tissue intensities they imply)."""
    return {
        name: {
            **site.model_dump(mode="json"),
            "tissue_intensity": scanner.tissue_intensities(site),
            "bias_field_seed": [cohort.seed, _stable_key(name)],
            "datasets": [d for d, spec in cohort.datasets.items() if name in spec.sites],
        }
        for name, site in cohort.sites.items()
    }
