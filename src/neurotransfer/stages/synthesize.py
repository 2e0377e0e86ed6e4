"""DVC stage `synthesize`: train (or load) the conditional brain LDM and sample a synthetic pool.

Reads the processed upstream pool (`data/processed/manifest.csv`); writes `models/ldm/`,
`data/synthetic/` (BIDS-like, read by `pretrain: synthetic`), `reports/synthetic/` and
`metrics/synthesize.json`. The science lives in `neurotransfer.synth`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from neurotransfer.config import Settings


def run(settings: Settings, args: argparse.Namespace) -> None:
    from neurotransfer.atomic import write_json_atomic
    from neurotransfer.runtime import json_ready
    from neurotransfer.synth.pipeline import run_synthesize, synthesize_settings

    config = synthesize_settings(settings)  # a missing block fails before any work
    metrics = run_synthesize(settings, Path("."))
    write_json_atomic(config.metrics_path, json_ready(metrics))
