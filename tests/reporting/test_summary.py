"""`reports/summary.md`: study table with intervals, baselines and montage links."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
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
    # the primary metric (raw MAE), the same one for the model and the baselines
    model_row = "| sfcn / scratch | brain_age | mae | 5.000 [4.900, 5.100] | 5.000 [4.900, 5.100] |"
    assert model_row in text
    assert "| baseline: mean_predictor | brain_age | mae | 0.500 | 0.500 |" in text
    assert "mae_corrected |" not in text
    assert "![montage_adni_siteA.png](qc/montage_adni_siteA.png)" in text
    assert "qc_table.csv" not in text
    assert "No figures in `reports/synthetic/`" in text


def test_a_skipped_stage_says_why_instead_of_showing_figures(tmp_path: Path) -> None:
    fake_workspace(tmp_path)
    (tmp_path / "reports/synthetic").mkdir(parents=True)
    (tmp_path / "reports/synthetic/SKIPPED.md").write_text(
        "synthesize skipped: pretrain.source is 'scratch'\n"
    )
    experiments = [read_results(WorkspaceReader(tmp_path), "workspace", with_predictions=False)]
    text = summary_markdown(experiments, tmp_path, {"Synthetic data": "reports/synthetic"}, 0.95)
    assert "synthesize skipped: pretrain.source is 'scratch'" in text
    assert "No figures in `reports/synthetic/`" not in text


def test_report_stage_writes_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neurotransfer.stages import report

    fake_workspace(tmp_path)
    write_scaling_curve(tmp_path, "brain_age", seeds=[0])
    monkeypatch.chdir(tmp_path)
    # Only the settings the stage reads: the test does not depend on the whole params.yaml.
    settings = SimpleNamespace(
        data=SimpleNamespace(qc_dir="reports/qc"),
        evaluate=SimpleNamespace(ci_level=0.9),
        synthesize=SimpleNamespace(report_dir="reports/synthetic"),
        scaling=SimpleNamespace(out_dir="reports/scaling"),
    )
    args = build_parser().parse_args(["report"])
    report.run(settings, args)  # type: ignore[arg-type]
    text = (tmp_path / "reports/summary.md").read_text()
    assert text.startswith("# neurotransfer study summary")
    assert "its 90% interval" in text
    assert "| sfcn / scratch | brain_age | mae |" in text
    assert "![brain_age data scaling](scaling/brain_age.png)" in text


def write_scaling_curve(root: Path, task: str, seeds: list[int]) -> None:
    rows = []
    for fraction, n_train, value in ((0.5, 20, 7.0), (1.0, 40, 5.0)):
        for seed in seeds:
            for split in ("test", "ood_test"):
                v = value + seed * 0.5
                rows.append(
                    {
                        "task": task,
                        "n_train": n_train,
                        "fraction": fraction,
                        "seed": seed,
                        "split": split,
                        "metric": "mae_corrected",
                        "value": v,
                        "ci_low": v - 1,
                        "ci_high": v + 1,
                        "n_eval": 30,
                    }
                )
    folder = root / "reports/scaling"
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / f"{task}.csv", index=False)
    (folder / f"{task}.png").write_bytes(b"\x89PNG")


def test_summary_has_scaling_tables_and_plots(tmp_path: Path) -> None:
    fake_workspace(tmp_path)
    write_scaling_curve(tmp_path, "brain_age", seeds=[0])
    write_scaling_curve(tmp_path, "ad", seeds=[0, 1])
    experiments = [read_results(WorkspaceReader(tmp_path), "workspace", with_predictions=False)]
    text = summary_markdown(experiments, tmp_path, {}, 0.95, scaling_dir="reports/scaling")
    assert "## Data scaling" in text
    assert "### brain_age (mae_corrected)" in text
    assert "| 0.5 | 20 | 7.000 [6.000, 8.000] | 7.000 [6.000, 8.000] |" in text
    assert "| 1 | 40 | 5.250 ± 0.354 (2 seeds) | 5.250 ± 0.354 (2 seeds) |" in text
    assert "![brain_age data scaling](scaling/brain_age.png)" in text
    # the section sits between the study table and the montages
    assert text.index("## Study table") < text.index("## Data scaling")


def test_summary_says_when_there_are_no_scaling_curves(tmp_path: Path) -> None:
    fake_workspace(tmp_path)
    experiments = [read_results(WorkspaceReader(tmp_path), "workspace", with_predictions=False)]
    text = summary_markdown(experiments, tmp_path, {}, 0.95, scaling_dir="reports/scaling")
    assert "No data-scaling curves in `reports/scaling/`" in text
