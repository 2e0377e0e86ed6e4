"""Compose ``params.yaml`` from ``conf/`` exactly as ``dvc exp run`` does.

``dvc exp run -S group=option`` composes the Hydra config in ``conf/`` and dumps it to
``params.yaml``; ``dvc repro`` uses the committed file as it is. This module calls DVC's own
composition function, so ``python -m neurotransfer.compose`` (``make params``) writes the
byte-identical file DVC would, and tests can check the committed one is in sync with ``conf/``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from neurotransfer.text_output import write_text_output


def compose_params(overrides: Sequence[str] = (), conf_dir: str | Path = "conf") -> str:
    """Return the YAML text DVC would write to params.yaml for these Hydra overrides."""
    from dvc.utils.hydra import compose_and_dump

    conf_dir = Path(conf_dir).resolve()
    if not (conf_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{conf_dir}/config.yaml: Hydra root config not found")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "params.yaml"
        compose_and_dump(out, str(conf_dir), None, "config", str(conf_dir.parent), list(overrides))
        return out.read_text(encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m neurotransfer.compose",
        description="Write params.yaml composed from conf/ (as `dvc exp run -S ...` would).",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=vit3d")
    parser.add_argument("--conf", default="conf", help="Hydra config directory")
    parser.add_argument("--out", default="params.yaml", help="file to write ('-' for stdout)")
    args = parser.parse_args(argv)
    text = compose_params(args.overrides, args.conf)
    write_text_output(text, args.out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
