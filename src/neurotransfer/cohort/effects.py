"""Ageing and disease: the per-subject latent variables and what they do to the tissue maps.

Effect sizes, with ``a = (age - 20) / 70`` (0 at 20, 1 at 90), ``r`` the subject's ageing rate
(normal, mean 1, s.d. 0.1), ``sev`` the disease severity (uniform 0.5-1 in patients, 0 otherwise)
and every atrophy multiplied by ``cohort.atrophy_scale``:

============================ ================================================ ================
effect                       model                                            typical size
============================ ================================================ ================
cortical GM thinning         cortical GM -> CSF, fraction 0.18 a r (+0.03     ~0.26 %/year,
                             sev in AD)                                       18 % at 90
ventricular enlargement      ventricles grow outward by 4.5 a^2 r mm          ~2x volume 20->80
                             (+2.5 sev mm in AD) + baseline Gamma(2, 0.3) mm
medial-temporal GM loss      hippocampus+amygdala GM -> CSF, 0.10 a^1.5 r     ~6 % at 70; AD
                             (+0.20 sev in AD) + baseline U(0, 0.30)          ~-23 % vs CN
putamen GM loss (PD)         putamen GM -> CSF, 0.03 a (+0.12 sev in PD)      PD -6 to -12 %
                             + baseline U(0, 0.10)
midbrain tissue loss (PD)    midbrain GM+WM -> CSF, 0.02 a (+0.10 sev in PD)  PD -5 to -10 %
                             + baseline U(0, 0.10)
GM/WM contrast with age      contrast x (1 - 0.10 a)                          -10 % at 90
head size                    scale N(1.018, 0.03) for M, N(0.982, 0.03) F     ~11 % volume M/F
============================ ================================================ ================

AD is clearly visible (hippocampi and ventricles, as in ADNI); PD is a few per cent in small
deep structures, hard to see on T1 as in PPMI. Lost tissue becomes CSF, so the skull-bounded
intracranial volume does not change with atrophy.

Every subject draws all its latents in the same order whatever its diagnosis, so the same
subject index with another diagnosis is the same person with (or without) the disease.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from neurotransfer.cohort.anatomy import MAX_VENTRICLE_EXPANSION_MM, Anatomy

FloatArray = NDArray[np.float32]

CORTICAL_LOSS_AGEING = 0.18
CORTICAL_LOSS_AD = 0.03
VENTRICLE_GROWTH_AGEING_MM = 4.5
VENTRICLE_GROWTH_AD_MM = 2.5
MEDIAL_TEMPORAL_LOSS_AGEING = 0.10
MEDIAL_TEMPORAL_LOSS_AD = 0.20
PUTAMEN_LOSS_AGEING = 0.03
PUTAMEN_LOSS_PD = 0.12
MIDBRAIN_LOSS_AGEING = 0.02
MIDBRAIN_LOSS_PD = 0.10
CONTRAST_LOSS_AGEING = 0.10
# natural variation between people, independent of age and disease (not scaled by atrophy_scale)
MEDIAL_TEMPORAL_BASELINE_MAX = 0.30
DEEP_BASELINE_MAX = 0.10
VENTRICLE_BASELINE_GAMMA = (2.0, 0.3)  # shape, scale (mm)
AGEING_RATE_SD = 0.10
SEVERITY_RANGE = (0.5, 1.0)
HEAD_SCALE_MEAN = {"M": 1.018, "F": 0.982}
HEAD_SCALE_SD = 0.03
MAX_LOSS = 0.9


@dataclass(frozen=True)
class Latents:
    """A subject's true anatomy parameters (saved as ground truth)."""

    head_scale: float
    ageing_rate: float
    disease_severity: float
    cortical_gm_loss: float
    medial_temporal_gm_loss: float
    ventricle_expansion_mm: float
    putamen_gm_loss: float
    midbrain_tissue_loss: float
    gm_wm_contrast_factor: float


def ageing_fraction(age: float) -> float:
    """``(age - 20) / 70`` clipped to [0, 1]: 0 for a young adult, 1 at 90."""
    return float(np.clip((age - 20.0) / 70.0, 0.0, 1.0))


def draw_latents(
    age: float, sex: str, diagnosis: str, atrophy_scale: float, rng: np.random.Generator
) -> Latents:
    """Draw a subject's latents; see the module docstring for the model."""
    a = ageing_fraction(age)
    # all draws happen for everyone, in a fixed order (see module docstring)
    head_scale = HEAD_SCALE_MEAN[sex] + HEAD_SCALE_SD * rng.standard_normal()
    rate = max(0.5, 1.0 + AGEING_RATE_SD * rng.standard_normal())
    severity_draw = rng.uniform(*SEVERITY_RANGE)
    ventricle_baseline = rng.gamma(*VENTRICLE_BASELINE_GAMMA)
    medial_temporal_baseline = rng.uniform(0.0, MEDIAL_TEMPORAL_BASELINE_MAX)
    putamen_baseline = rng.uniform(0.0, DEEP_BASELINE_MAX)
    midbrain_baseline = rng.uniform(0.0, DEEP_BASELINE_MAX)

    ad = severity_draw if diagnosis == "AD" else 0.0
    pd = severity_draw if diagnosis == "PD" else 0.0
    k = atrophy_scale

    def fraction(value: float) -> float:
        return float(np.clip(value, 0.0, MAX_LOSS))

    return Latents(
        head_scale=float(head_scale),
        ageing_rate=float(rate),
        disease_severity=float(ad + pd),
        cortical_gm_loss=fraction(k * (CORTICAL_LOSS_AGEING * a * rate + CORTICAL_LOSS_AD * ad)),
        medial_temporal_gm_loss=fraction(
            medial_temporal_baseline
            + k * (MEDIAL_TEMPORAL_LOSS_AGEING * a**1.5 * rate + MEDIAL_TEMPORAL_LOSS_AD * ad)
        ),
        ventricle_expansion_mm=float(
            min(
                MAX_VENTRICLE_EXPANSION_MM,
                ventricle_baseline
                + k * (VENTRICLE_GROWTH_AGEING_MM * a**2 * rate + VENTRICLE_GROWTH_AD_MM * ad),
            )
        ),
        putamen_gm_loss=fraction(
            putamen_baseline + k * (PUTAMEN_LOSS_AGEING * a + PUTAMEN_LOSS_PD * pd)
        ),
        midbrain_tissue_loss=fraction(
            midbrain_baseline + k * (MIDBRAIN_LOSS_AGEING * a + MIDBRAIN_LOSS_PD * pd)
        ),
        gm_wm_contrast_factor=float(1.0 - CONTRAST_LOSS_AGEING * a),
    )


@dataclass(frozen=True)
class Tissues:
    """A subject's tissue probability maps on the template grid (before its warp)."""

    gm: FloatArray
    wm: FloatArray
    csf: FloatArray


def apply_effects(anatomy: Anatomy, latents: Latents) -> Tissues:
    """Template tissue maps with this subject's atrophy; lost GM/WM becomes CSF."""
    gm = anatomy.gm * (1.0 - np.float32(latents.cortical_gm_loss) * anatomy.cortex)
    wm = anatomy.wm.copy()
    for region, loss in (
        ("medial_temporal", latents.medial_temporal_gm_loss),
        ("putamen", latents.putamen_gm_loss),
        ("midbrain", latents.midbrain_tissue_loss),
    ):
        box = anatomy.region_boxes[region]
        keep = 1.0 - np.float32(loss) * anatomy.regions[region][box]
        gm[box] *= keep
        if region == "midbrain":  # the midbrain shrinks as a whole, white matter included
            wm[box] *= keep

    # Ventricles grow outward by ventricle_expansion_mm into the white matter and deep grey
    # matter around them (the corpus callosum thins, the caudate recedes); cortical GM beyond
    # the callosum is left alone. The partial-volume edge is one voxel wide.
    box = anatomy.region_boxes["ventricles"]
    distance = anatomy.ventricle_growth_distance_mm[box]
    growth = np.clip(
        0.5 + (latents.ventricle_expansion_mm - distance) / anatomy.resolution_mm, 0.0, 1.0
    )
    growth *= anatomy.regions["ventricles"][box]
    wm[box] *= 1.0 - growth
    gm[box] *= 1.0 - growth * (1.0 - anatomy.cortex[box])
    csf = np.clip(anatomy.brain - gm - wm, 0.0, 1.0)
    return Tissues(gm=gm, wm=wm, csf=csf)


def true_volumes(anatomy: Anatomy, tissues: Tissues, volume_ratio: FloatArray) -> dict[str, float]:
    """Regional volumes (mL) of the subject: template-space maps times the warp's Jacobian."""
    voxel_ml = anatomy.voxel_ml

    def ml(values: FloatArray, box: tuple[slice, ...] = (slice(None),) * 3) -> float:
        return round(float(np.sum(values * volume_ratio[box], dtype=np.float64)) * voxel_ml, 3)

    def regional(region: str, tissue: FloatArray) -> float:
        box = anatomy.region_boxes[region]
        return ml(tissue[box] * anatomy.regions[region][box], box)

    return {
        "icv_ml": ml(anatomy.brain),
        "brain_ml": ml(tissues.gm + tissues.wm),
        "gm_ml": ml(tissues.gm),
        "wm_ml": ml(tissues.wm),
        "csf_ml": ml(tissues.csf),
        "cortical_gm_ml": ml(tissues.gm * anatomy.cortex),
        "medial_temporal_gm_ml": regional("medial_temporal", tissues.gm),
        "ventricle_csf_ml": regional("ventricles", tissues.csf),
        "putamen_gm_ml": regional("putamen", tissues.gm),
        "midbrain_tissue_ml": regional("midbrain", tissues.gm + tissues.wm),
    }
