"""The evaluate stage's check that the saved models are the ones params describe."""

from __future__ import annotations

import pytest

from neurotransfer.config import FinetuneSettings, SettingsError
from neurotransfer.stages.evaluate import check_models_match_settings


def test_models_of_other_seeds_than_params_are_refused() -> None:
    settings = FinetuneSettings(seed=1, seeds=3)
    meta = {"seeds": [3, 4, 5], "ensemble_size": 1}
    check_models_match_settings(meta, settings, "ad")
    with pytest.raises(SettingsError, match=r"seeds: saved \[0, 1, 2\].*finetune@ad"):
        check_models_match_settings({**meta, "seeds": [0, 1, 2]}, settings, "ad")
    with pytest.raises(SettingsError, match=r"ensemble_size: saved 5, params 1"):
        check_models_match_settings({**meta, "ensemble_size": 5}, settings, "ad")
