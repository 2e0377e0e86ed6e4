"""The embedded phantom cohort: MNI152-based synthetic T1 scans from simulated sites.

``anatomy`` (templates, regions, warps), ``generate`` (demographics, ageing/disease effects,
BIDS writing, ground truth), ``scanner`` (site appearance and NIfTI storage), ``montage``
(per-site pictures). The ``cohort`` stage calls :func:`generate.write_cohort`.
"""
