"""DVC stage `pretrain`: the backbone initialisation that `finetune` starts from.

Reads the `pretrain` and `model` params, the processed upstream pool (age probe; `ssl`
training) and, per source, the synthetic dataset or external torchvision weights; writes
`models/pretrained/` (`backbone.safetensors` + `meta.json`), `metrics/pretrain.json` and
`dvclive/pretrain/`. The science lives in `neurotransfer.pretrain`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from neurotransfer.config import Settings


def run(settings: Settings, args: argparse.Namespace) -> None:
    from neurotransfer.pretrain.run import check_pretrain_settings, run_pretrain

    check_pretrain_settings(settings)  # an impossible source/model pair fails before any work
    run_pretrain(settings, Path("."))
