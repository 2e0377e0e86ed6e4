"""`reports/summary.md`: study table with intervals, baselines and montage links."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from neurotransfer.cli import build_parser
from neurotransfer.reporting.revisions import WorkspaceReader, read_results
from neurotransfer.reporting.summary import summary_markdown
from tests.reporting.helpers import write_eval_outputs


def fake_workspace(root: Path) -> None:
    write_eval_outputs(root, "ad", "binary", quality=2.0)
    write_eval_outputs(root, "brain_age", "regression", quality=2.0)
    (root / "reports/qc").mkdir(parents=True)
    (root / "reports/qc/montage_adni_siteA.png").write_bytes(b"\x89PNG")
    (root / "reports/qc/qc_table.csv").write_text("x\n")


def test_summary_has_study_table_and_montages(tmp_path: Path) -> None:
    fake_workspace(tmp_path)
    experiments = [read_results(WorkspaceReader(tmp_path), "workspace", with_predictions=False)]
    text = summary_markdown(
        experiments,
        tmp_path,
        {"QC montages": "reports/qc", "Synthetic data": "reports/synthetic"},
        0.95,
    )
    assert "| variant | task | metric | ID (test) | OOD (held-out sites) |" in text
    assert "| sfcn / scratch | ad | auc | 0.700 [0.600, 0.800] | 0.700 [0.600, 0.800] |" in text
    assert "| baseline: mean_predictor | brain_age | mae_corrected | 0.500 | 0.500 |" in text
    assert "![montage_adni_siteA.png](qc/montage_adni_siteA.png)" in text
    assert "qc_table.csv" not in text
    assert "No figures in `reports/synthetic/`" in text


def test_report_stage_writes_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neurotransfer.stages import report

    fake_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    # Only the two settings the stage reads: the test does not depend on the whole params.yaml.
    settings = SimpleNamespace(
        data=SimpleNamespace(qc_dir="reports/qc"), evaluate=SimpleNamespace(ci_level=0.9)
    )
    args = build_parser().parse_args(["report"])
    report.run(settings, args)  # type: ignore[arg-type]
    text = (tmp_path / "reports/summary.md").read_text()
    assert text.startswith("# neurotransfer study summary")
    assert "90% subject-level bootstrap" in text
    assert "| sfcn / scratch | brain_age | mae_corrected |" in text
