"""The pull-request comment: `dvc metrics diff` and `dvc params diff` against the base branch.

``python -m neurotransfer.reporting.pr_comment --base origin/main --output comment.md`` runs
both diffs (workspace against `--base`) and writes one Markdown body that starts with
`MARKER`, a hidden HTML comment by which the commenting workflow finds and updates its own
comment instead of adding one per push. Text only: nothing but the two tables leaves the runner.
A failing diff is shown in the comment rather than failing the job, so a PR always gets feedback.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from neurotransfer.text_output import write_text_output

MARKER = "<!-- neurotransfer-pr-metrics -->"
# GitHub refuses comment bodies over 65,536 characters; leave room for the truncation note.
MAX_CHARS = 60_000


def dvc_diff(kind: str, base: str, repo: Path) -> str:
    """`dvc <kind> diff --md <base>` in `repo`, or a fenced error message if it fails."""
    command = ["dvc", kind, "diff", "--md", base]
    proc = subprocess.run(
        [dvc_executable(), *command[1:]], cwd=repo, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip()[-2000:]
        return f"`{' '.join(command)}` failed:\n\n```\n{message}\n```"
    table = proc.stdout.strip()
    # With nothing changed dvc prints an empty table (a header and its rule): say so instead.
    rows = [line for line in table.splitlines() if line.startswith("|")]
    return table if len(rows) > 2 else f"No {kind} changed."


def dvc_executable() -> str:
    """The `dvc` installed beside this Python (a venv not on PATH), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.is_file() else "dvc"


def comment_body(base: str, repo: Path = Path("."), head_label: str | None = None) -> str:
    head = f" at `{head_label}`" if head_label else ""
    body = "\n".join(
        [
            MARKER,
            "## neurotransfer: pipeline metrics",
            "",
            f"The pipeline ran on the embedded phantom cohort (CPU profile){head}; the tables "
            f"compare this pull request with `{base}` (`dvc metrics diff` / `dvc params diff`).",
            "",
            "### Metrics",
            "",
            dvc_diff("metrics", base, repo),
            "",
            "### Params",
            "",
            dvc_diff("params", base, repo),
            "",
        ]
    )
    if len(body) > MAX_CHARS:
        body = body[:MAX_CHARS] + "\n\n… (truncated: run `dvc metrics diff` locally for all)\n"
    return body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="revision to diff against (origin/main)")
    parser.add_argument("--repo", default=".", help="git + DVC repository (default: .)")
    parser.add_argument("--head-label", default=None, help="what was run, e.g. the head SHA")
    parser.add_argument("--output", default="-", help="file to write ('-': stdout)")
    args = parser.parse_args(argv)
    body = comment_body(args.base, Path(args.repo), args.head_label)
    write_text_output(body, args.output)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
