"""`neurotransfer compare EXP_A EXP_B`: paired comparison of two experiments (not a DVC stage).

Each side is a git rev, an experiment name or `workspace`; a comma-separated list gives one
revision per seed (the i-th of A is paired with the i-th of B). The per-subject predictions are
read at each revision through DVC, so nothing in the workspace changes. params.yaml is not
read: the revisions carry their own results, and the task kinds come from their metrics files.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

NEEDS_SETTINGS = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("exp_a", metavar="EXP_A", help="baseline side: rev[,rev...] (one per seed)")
    parser.add_argument("exp_b", metavar="EXP_B", help="other side: rev[,rev...], same length")
    parser.add_argument("--repo", default=".", help="git + DVC repository (default: .)")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks (default: all)")
    parser.add_argument("--n-resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--ci-level", type=float, default=0.95, help="interval level")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--output", default="-", help="Markdown file to write ('-': stdout)")


def _revs(spec: str) -> list[str]:
    return [rev.strip() for rev in spec.split(",") if rev.strip()]


def run(settings: Any, args: argparse.Namespace) -> None:
    from neurotransfer.reporting.compare import compare_experiments, comparison_markdown
    from neurotransfer.reporting.revisions import RevisionError, read_revision

    root = Path(args.repo)
    tasks = _revs(args.tasks) if args.tasks else None
    try:
        side_a = [read_revision(root, rev, tasks=tasks) for rev in _revs(args.exp_a)]
        side_b = [read_revision(root, rev, tasks=tasks) for rev in _revs(args.exp_b)]
        comparison = compare_experiments(side_a, side_b, args.n_resamples, args.ci_level, args.seed)
    except (RevisionError, ValueError) as err:
        raise SystemExit(f"error: {err}") from err
    text = comparison_markdown(comparison)
    if args.output == "-":
        print(text, end="")
    else:
        Path(args.output).write_text(text, encoding="utf-8")
