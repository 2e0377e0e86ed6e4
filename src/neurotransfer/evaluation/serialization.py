"""Make evaluation results JSON-safe: numpy types to Python, NaN and infinities to null.

Strict JSON has no NaN; ``json.dump(..., allow_nan=False)`` refuses it and ``dvc metrics``
cannot read Python's ``NaN`` token. An undefined metric (AUC of a one-class site) is written as
``null``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np


def json_ready(obj: Any) -> Any:
    """A copy of `obj` that ``json.dumps(..., allow_nan=False)`` accepts.

    Recurses through mappings (keys become strings), lists, tuples, sets (sorted) and numpy
    arrays; numpy scalars become Python numbers; NaN and ±inf become None; paths become
    strings; dataclass instances become dicts. Anything else unknown raises TypeError.
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
