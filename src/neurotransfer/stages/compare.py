"""`neurotransfer compare EXP_A EXP_B`: does B beat A? (not a DVC stage).

Each side is a git rev, an experiment name or `workspace`, or a comma-separated list of them;
every fine-tuning seed of every revision of a side is one seed of that arm. The per-subject
predictions are read at each revision through DVC, so nothing in the workspace changes.
params.yaml is not read: the revisions carry their own results, and the task kinds come from
their metrics files.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

NEEDS_SETTINGS = False

RULE = """\
The rule (one for every task and split; see README, "Comparing experiments"):
  * every fine-tuning seed is one seed of its arm (a revision's prediction_seed<k> columns,
    or one revision per seed: rev1,rev2,rev3); subjects are paired across arms;
  * each metric becomes per-subject jackknife pseudo-values (AUC: DeLong placements), and
    Var(B - A) = subject term + seed term (seed x subject random effects, method of moments);
  * the interval and the p-value come from the same t (Satterthwaite df): the interval
    excludes 0 exactly when p < 1 - level;
  * one primary metric per task (AUC for binary, raw MAE for regression) decides; the
    primaries over tasks x splits are adjusted together (--adjust holm|bh); other metrics are
    exploratory, unadjusted; thresholded ones (balanced accuracy, ...) call each seed's
    predictions at that seed's validation-chosen threshold (0.5, with a note, when the run
    recorded none);
  * no variation at all (e.g. both arms perfect on every subject) gives no interval and a
    note: p = 1 when the difference is 0, no p-value (left out of the adjustment) otherwise;
  * an arm with a single seed is refused (train several: finetune.seeds);
  * with cross-validation (data.splits.mode kfold) every subject is in the test split once,
    so the pairing covers all of them."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = RULE
    parser.add_argument("exp_a", metavar="EXP_A", help="baseline side: rev[,rev...]")
    parser.add_argument("exp_b", metavar="EXP_B", help="other side: rev[,rev...]")
    parser.add_argument("--repo", default=".", help="git + DVC repository (default: .)")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks (default: all)")
    parser.add_argument(
        "--adjust",
        choices=("holm", "bh"),
        default="holm",
        help="multiplicity adjustment of the primary tests: holm (family-wise error, default) "
        "or bh (Benjamini-Hochberg false discovery rate)",
    )
    parser.add_argument("--ci-level", type=float, default=0.95, help="interval level")
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
        comparison = compare_experiments(side_a, side_b, args.ci_level, args.adjust)
    except (RevisionError, ValueError) as err:
        raise SystemExit(f"error: {err}") from err
    text = comparison_markdown(comparison)
    if args.output == "-":
        print(text, end="")
    else:
        Path(args.output).write_text(text, encoding="utf-8")
