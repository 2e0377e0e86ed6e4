"""Where and how computation runs, and how results become JSON: one behaviour for every stage.

- :func:`resolve_device`: ``cpu`` is the CPU; ``gpu`` is CUDA and an error naming the setting
  when there is none; ``auto`` is CUDA when present and otherwise the CPU, said in the log.
- :func:`resolve_precision`: what ``precision: auto`` means on this machine.
- :func:`json_ready`: strict JSON (``dvc metrics`` cannot read Python's ``NaN`` token).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def resolve_device(accelerator: str, setting: str = "accelerator") -> torch.device:
    """The torch device for an ``accelerator`` setting (``setting``: its key, for messages)."""
    # torch is imported here, not at the top: json_ready also serves runs that never load torch
    # (a skipped synthesize, the report), where importing it would cost seconds.
    import torch

    if accelerator == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator == "gpu":
        raise RuntimeError(f"{setting} is 'gpu' but no CUDA device is available")
    log.info("%s is %r and there is no CUDA device: running on the CPU", setting, accelerator)
    return torch.device("cpu")


def resolve_precision(setting: str) -> str:
    """'auto' means bf16 mixed precision on a GPU that supports it, else full fp32.

    An explicit setting is passed to Lightning as it is: "bf16-mixed" on the CPU runs the
    forward pass under CPU autocast to bfloat16 (weights, optimizer and loss stay fp32);
    benchmarks/train_step_cpu.py measures what it gains on a given CPU."""
    if setting != "auto":
        return setting
    import torch  # as in resolve_device

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def json_ready(obj: Any) -> Any:
    """A copy of `obj` that ``json.dumps(..., allow_nan=False)`` accepts.

    Recurses through mappings (keys become strings), lists, tuples, sets (sorted) and numpy
    arrays; numpy scalars become Python numbers; NaN and ±inf become None (an undefined metric,
    such as the AUC of a one-class site, is ``null``); paths become strings; dataclass
    instances become dicts. Anything else unknown raises TypeError.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, Mapping):
        return {str(key): json_ready(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(value) for value in obj]
    if isinstance(obj, (set, frozenset)):
        return [json_ready(value) for value in sorted(obj, key=str)]
    if isinstance(obj, PurePath):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return json_ready(dataclasses.asdict(obj))
    raise TypeError(f"json_ready cannot convert {type(obj).__name__}: {obj!r}")
