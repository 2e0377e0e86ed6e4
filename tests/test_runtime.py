"""runtime: json_ready makes strict JSON; resolve_device has one rule for every stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from neurotransfer.evaluation import AgeBiasCorrection
from neurotransfer.runtime import json_ready


def test_nested_numpy_and_non_finite_values_become_json() -> None:
    result = {
        "auc": np.float32(0.75),
        "n": np.int64(12),
        "flag": np.bool_(True),
        "undefined": float("nan"),
        "overflow": np.float64(-np.inf),
        "per_site": {np.str_("A"): [np.nan, 1.5, (2, np.float16(0.5))]},
        "curve": np.array([[0.0, np.nan], [1.0, 2.0]]),
        1: {"set": {"b", "a"}},
        "path": Path("metrics/eval/ad.json"),
        "correction": AgeBiasCorrection(slope=0.8, intercept=10.0),
    }
    ready = json_ready(result)
    text = json.dumps(ready, allow_nan=False)  # raises on any NaN left behind
    assert json.loads(text) == {
        "auc": 0.75,
        "n": 12,
        "flag": True,
        "undefined": None,
        "overflow": None,
        "per_site": {"A": [None, 1.5, [2, 0.5]]},
        "curve": [[0.0, None], [1.0, 2.0]],
        "1": {"set": ["a", "b"]},
        "path": "metrics/eval/ad.json",
        "correction": {"slope": 0.8, "intercept": 10.0, "fallback_reason": None},
    }
    assert type(ready["n"]) is int and type(ready["auc"]) is float


def test_unknown_objects_are_refused_rather_than_stringified() -> None:
    with pytest.raises(TypeError, match="cannot convert object"):
        json_ready({"model": object()})


def test_devices_follow_one_rule(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from neurotransfer.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu").type == "cpu"
    with caplog.at_level("INFO", logger="neurotransfer.runtime"):
        assert resolve_device("auto", "pretrain.accelerator").type == "cpu"
    assert "pretrain.accelerator is 'auto' and there is no CUDA device" in caplog.text
    with pytest.raises(RuntimeError, match=r"synthesize\.accelerator is 'gpu' but no CUDA device"):
        resolve_device("gpu", "synthesize.accelerator")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("gpu").type == "cuda"
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cpu").type == "cpu"
