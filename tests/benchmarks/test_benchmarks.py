"""The benchmark scripts run end to end on a CPU at tiny sizes and produce their figures.

They assert that figures exist and are sane (positive, finite, in range), never speed: these
runs share two cores with everything else.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_script(name: str, *args: str, timeout: int = 240) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def finite_positive(value: object) -> bool:
    return isinstance(value, float | int) and math.isfinite(value) and value > 0


def test_train_throughput_reports_every_model_and_path(tmp_path: Path) -> None:
    stdout = run_script(
        "train_throughput.py",
        "--tiny",
        "--sizes=32",
        "--batch=2",
        "--steps=2",
        "--warmup=1",
        "--volumes=4",
        "--workers=0",
        "--peak-tflops=1",  # a nominal CPU peak, so the MFU arithmetic runs too
        "--ablate",
        f"--out={tmp_path}",
        f"--tmp={tmp_path}",
    )
    assert "torch " in stdout and "cuDNN" in stdout and "machine:" in stdout
    report = json.loads(next(tmp_path.glob("train_throughput_*_tiny.json")).read_text())
    assert report["device"].startswith("cpu")
    assert set(report["versions"]) == {"torch", "cuda", "cudnn"}
    rows = report["results"]
    assert {(r["model"], r["path"]) for r in rows} >= {
        (m, p) for m in ("densenet121", "sfcn", "vit_b") for p in ("naive", "pipeline", "lightning")
    }
    for row in rows:
        assert finite_positive(row["volumes_per_s"]), row
        assert finite_positive(row["forward_gflops_per_volume"]), row
        assert 0 <= row["stall_pct"] <= 100, row
        assert 0 < row["mfu"] < 1, row
        assert finite_positive(row["speedup_vs_naive"]), row
    pipeline = [r for r in rows if r["path"] in ("pipeline", "lightning")]
    assert all(r["options"]["cache"] == "loader" and not r["options"]["amp"] for r in pipeline)


def test_flops_are_counted_for_the_paper_size_networks() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_throughput

    flops = {
        m: train_throughput.forward_flops(spec, 96) for m, spec in train_throughput.MODELS.items()
    }
    # Counted on the meta device: ViT-B/16 at 96^3 (216 tokens, 86 M parameters) ~ 2 x 86 M x
    # 216 plus attention; DenseNet121 and SFCN tens of GFLOPs.
    assert 35e9 < flops["vit_b"] < 45e9
    assert 20e9 < flops["densenet121"] < 60e9
    assert 10e9 < flops["sfcn"] < 60e9


def test_cost_growth_reports_ratios(tmp_path: Path) -> None:
    stdout = run_script(
        "cost_growth.py",
        "--subjects=24,48",  # small: the test checks the report, not the figures
        "--workers=2",
        f"--out={tmp_path}",
        f"--tmp={tmp_path}",
        timeout=400,
    )
    assert "normalised" in stdout
    report = json.loads(next(tmp_path.glob("cost_growth_*.json")).read_text())
    small, large = report["rows"]
    assert small["n_subjects"] < large["n_subjects"]
    for row in report["rows"]:
        for key in ("cohort_s", "preprocess_s", "epoch_s"):
            assert finite_positive(row[key]), (key, row)
    for key in ("cohort_s", "preprocess_s", "epoch_s"):
        assert finite_positive(report["ratios"][key]["time_ratio"])
        assert report["ratios"][key]["size_ratio"] > 1
