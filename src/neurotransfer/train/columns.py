"""Column names of a prediction table (`predict.predict_frame`, `predict.predict_seeds`), which
``evaluate`` scores and ``neurotransfer compare`` reads.

Plain names only, no torch: ``evaluation.seeds`` (and through it ``reporting``) imports them
without loading the models.
"""

from __future__ import annotations

FRAME_COLUMNS = ["subject_id", "dataset", "site", "split", "target", "prediction"]


def seed_column(seed_value: int) -> str:
    """Predictions column of the model (or ensemble) trained with seed value `seed_value`;
    ``neurotransfer compare`` reads these columns."""
    return f"prediction_seed{seed_value}"


def member_column(index: int) -> str:
    """Predictions column of ensemble member `index` (written only for the ensemble of a run
    with one fine-tuning seed)."""
    return f"prediction_member{index}"
