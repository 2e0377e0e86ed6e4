"""Reporting: paired comparisons between experiments, the study summary, the PR comment.

Reads evaluation outputs (metrics JSON, per-subject predictions) at a revision, and writes
Markdown; the statistics themselves live in ``neurotransfer.evaluation.paired``.

- ``revisions``: an experiment's outputs in the workspace, at a git rev or a `dvc exp`
- ``compare``: the `neurotransfer compare` table (one pair, or mean ± sd over seeds)
- ``summary``: ``reports/summary.md`` (study table, QC and synthetic montages)
- ``pr_comment``: the pull-request comment body (`dvc metrics diff` / `dvc params diff`)
"""
