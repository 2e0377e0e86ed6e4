"""The embedded phantom cohort: MNI152-based synthetic T1 scans from simulated sites.

``anatomy`` (templates, regions, scalp), ``fields`` (smooth B-spline random fields), ``warp``
(head size and shape), ``effects`` (ageing and disease latents, atrophy, true volumes),
``scanner`` (site appearance and NIfTI storage), ``generate`` (demographics, BIDS writing,
ground truth), ``montage`` (per-site pictures). The ``cohort`` stage calls
:func:`generate.write_cohort` and :func:`generate.write_ground_truth`.
"""
