"""Learning-rate schedules shared by pre-training and fine-tuning."""

from __future__ import annotations

import math


def warmup_cosine_factor(
    step: int, warmup_steps: int, total_steps: int, floor: float = 0.0
) -> float:
    """LR multiplier: linear warm-up from ~0 to 1 over `warmup_steps`, then cosine to `floor`.

    Dhinagar et al. (2023) found warm-up followed by cosine annealing important for training
    ViTs on structural MRI; the same schedule is used for every backbone so that only the
    initialisation differs between variants.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
