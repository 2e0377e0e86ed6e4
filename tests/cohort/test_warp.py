"""The subject warp: true volumes from its Jacobian agree with measuring the warped maps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from neurotransfer.cohort.anatomy import Anatomy
from neurotransfer.cohort.generate import plan_cohort, subject_anatomy, subject_rng
from neurotransfer.config import settings_from_dict


def _brute_force_ml(
    anatomy: Anatomy, subject: Any, template_map: np.ndarray, step_mm: float, box=None
) -> float:
    """Sample a template-space map on a fine subject-space grid and add it up.

    With ``box`` (template voxel slices) only the part of the subject around where that box
    lands is sampled (the displacement is a few mm; 10 mm of margin is ample).
    """
    lower, upper = anatomy.fov_lower_mm, anatomy.fov_upper_mm
    if box is not None:
        res, origin = anatomy.resolution_mm, anatomy.affine[:3, 3]
        low = origin + res * np.array([s.start for s in box])
        high = origin + res * np.array([s.stop - 1 for s in box])
        centre, scale = anatomy.centre_mm, subject.latents.head_scale
        lower = centre + scale * (low - centre) - 10.0
        upper = centre + scale * (high - centre) + 10.0
    axes = [np.arange(lo, hi + step_mm, step_mm) for lo, hi in zip(lower, upper, strict=True)]
    coords = subject.warp.template_voxels(anatomy, *axes)
    sampled = ndimage.map_coordinates(template_map, coords, order=1, cval=0.0, output=np.float32)
    return float(sampled.sum(dtype=np.float64)) * step_mm**3 / 1000.0


def test_true_volumes_match_the_warped_tissue_maps(
    anatomy: Anatomy, make_params: Callable[..., dict]
) -> None:
    cohort = settings_from_dict(make_params()).cohort
    # the smallest and the largest head among the first few subjects
    subjects = [
        subject_anatomy(plan, cohort, anatomy, subject_rng(plan, cohort))
        for plan in plan_cohort(cohort)[:4]
    ]
    by_scale = sorted(subjects, key=lambda s: s.latents.head_scale)
    small, large = by_scale[0], by_scale[-1]
    for subject in (small, large):
        box = anatomy.region_boxes["medial_temporal"]
        medial_temporal = np.zeros(anatomy.shape, np.float32)
        medial_temporal[box] = subject.tissues.gm[box] * anatomy.regions["medial_temporal"][box]
        volumes = subject.volumes
        assert volumes["icv_ml"] == pytest.approx(
            _brute_force_ml(anatomy, subject, anatomy.brain, 2.0), rel=0.01
        )
        assert volumes["gm_ml"] == pytest.approx(
            _brute_force_ml(anatomy, subject, subject.tissues.gm, 2.0), rel=0.01
        )
        assert volumes["medial_temporal_gm_ml"] == pytest.approx(
            _brute_force_ml(anatomy, subject, medial_temporal, 1.0, box), rel=0.02
        )
    # head size: the skull-bounded volume scales with the cube of the head scale
    ratio = large.volumes["icv_ml"] / small.volumes["icv_ml"]
    assert ratio == pytest.approx(
        (large.latents.head_scale / small.latents.head_scale) ** 3, rel=0.03
    )
