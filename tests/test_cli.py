"""The `neurotransfer` command: one subcommand per stage, clear errors on bad parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neurotransfer.cli import DEBUG_ENV, STAGES, build_parser, main
from neurotransfer.config import SettingsError


def test_help_lists_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert stage in out


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_has_help(stage: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([stage, "--help"])
    assert exc.value.code == 0
    assert stage in capsys.readouterr().out


def test_bad_params_exit_2_naming_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("seed: -1\n", encoding="utf-8")
    assert main(["--params", str(params), "cohort"]) == 2
    err = capsys.readouterr().err
    assert str(params) in err
    assert "seed" in err


def test_missing_params_file_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--params", str(tmp_path / "nope.yaml"), "cohort"]) == 2
    assert "not found" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Failures while a stage runs: one line naming the stage and the cause; the traceback on demand.
# --------------------------------------------------------------------------------------------
def _failing_stage(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """Make the `cohort` stage fail with `error` once its settings have loaded."""
    import neurotransfer.stages.cohort as cohort_stage

    def run(settings: object, args: object) -> None:
        raise error

    monkeypatch.setattr(cohort_stage, "run", run)
    monkeypatch.delenv(DEBUG_ENV, raising=False)


def _cohort(repo_root: Path, *extra: str) -> list[str]:
    return ["--params", str(repo_root / "params.yaml"), *extra, "cohort"]


def test_runtime_error_is_one_line_without_traceback(
    repo_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _failing_stage(monkeypatch, RuntimeError("the GPU fell off\nsecond line of detail"))
    assert main(_cohort(repo_root)) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: cohort: RuntimeError: the GPU fell off second line of detail "
        f"(--debug or {DEBUG_ENV}=1 for the traceback)"
    ]


def test_missing_file_names_the_file(
    repo_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _failing_stage(monkeypatch, FileNotFoundError(2, "No such file or directory", "data/x.npy"))
    assert main(_cohort(repo_root)) == 1
    assert capsys.readouterr().err == "error: cohort: data/x.npy: no such file or directory\n"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_prints_the_traceback(
    how: str,
    repo_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _failing_stage(monkeypatch, ValueError("bad volume"))
    if how == "env":
        monkeypatch.setenv(DEBUG_ENV, "1")
    assert main(_cohort(repo_root, *(["--debug"] if how == "flag" else []))) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "raise error" in err
    assert err.splitlines()[-1] == "error: cohort: bad volume"


def test_debug_env_set_to_zero_is_off(
    repo_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _failing_stage(monkeypatch, ValueError("bad volume"))
    monkeypatch.setenv(DEBUG_ENV, "0")
    assert main(_cohort(repo_root)) == 1
    assert capsys.readouterr().err == "error: cohort: bad volume\n"


def test_interrupt_is_one_line_and_exit_130(
    repo_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _failing_stage(monkeypatch, KeyboardInterrupt())
    assert main(_cohort(repo_root)) == 130
    assert capsys.readouterr().err == "error: cohort: interrupted\n"


def test_settings_error_while_running_exits_2_naming_the_stage(
    repo_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _failing_stage(monkeypatch, SettingsError("unknown task 'nope'"))
    assert main(_cohort(repo_root)) == 2
    assert capsys.readouterr().err == "error: cohort: unknown task 'nope'\n"


def test_incompatible_params_stop_at_start_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    raw["model"] = {"name": "vit3d", "options": {"patch_size": 16}}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["--params", str(params), "cohort"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {params}: invalid settings: data.preprocess.shape (40, 48, 40)")
    assert "model.options.patch_size" in err


# --------------------------------------------------------------------------------------------
# Stages run out of order, and task data that cannot train: one line saying what to do.
# --------------------------------------------------------------------------------------------
def _tiny_params(tmp_path: Path) -> Path:
    """The committed params shrunk to the 16^3 cohort of tests/train/cached_cohort.py."""
    from tests.train.cached_cohort import SHAPE

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    raw["data"]["preprocess"]["shape"] = list(SHAPE)
    raw["model"]["options"] = {"channels": [4, 8, 8], "dropout": 0.0}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return params


@pytest.mark.slow
def test_stages_run_out_of_order_say_which_stage_to_run_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import pandas as pd

    from tests.train.cached_cohort import write_cohort

    params = _tiny_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DEBUG_ENV, raising=False)

    assert main(["--params", str(params), "finetune", "--task", "ad"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "error: finetune --task ad: data/processed/manifest.csv: manifest not found "
        "(run the preprocess stage first)"
    )
    assert not any("Traceback" in line for line in err)

    assert main(["--params", str(params), "evaluate", "--task", "ad"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: evaluate --task ad: models/finetuned/ad/meta.json: ")
    assert "run the finetune stage first" in last

    # A manifest whose validation split has no AD subject: the stage stops before training
    # (no pre-trained backbone exists either, and that is not what it reports).
    write_cohort(tmp_path, n_train=8)
    manifest = pd.read_csv("data/processed/manifest.csv")
    manifest.loc[manifest["split"] == "val", "diagnosis"] = "CN"
    manifest.to_csv("data/processed/manifest.csv", index=False)
    assert main(["--params", str(params), "finetune", "--task", "ad"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(
        "error: finetune --task ad: task 'ad': split 'val' has no positive (AD) subjects"
    )
    assert not Path("models/finetuned").exists()


def test_a_dataset_no_task_uses_is_reported_before_the_stage_runs(
    repo_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["data"]["datasets"]["extra"] = {
        "format": "bids",
        "path": "data/raw/extra",
        "role": "downstream",
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    _failing_stage(monkeypatch, RuntimeError("stop here"))
    with caplog.at_level("WARNING", logger="neurotransfer"):
        assert main(["--params", str(path), "cohort"]) == 1
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("extra are in data.datasets but in no task's datasets" in m for m in warned)
    # the committed params use every dataset: nothing to report
    caplog.clear()
    with caplog.at_level("WARNING", logger="neurotransfer"):
        main(_cohort(repo_root))
    assert not [r for r in caplog.records if "no task's datasets" in r.getMessage()]


def test_lightning_lines_print_once_without_the_advert_or_the_leafspec_warning() -> None:
    import logging
    import warnings

    import lightning.pytorch  # gives the `lightning` logger its own console handler

    from neurotransfer.cli import quiet_library_logs

    class Lines(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    root, lightning = logging.getLogger(), logging.getLogger("lightning")
    saved = (root.handlers[:], lightning.handlers[:], lightning.propagate)
    at_root, own = Lines(), Lines()  # main's basicConfig handler; Lightning's console handler
    root.handlers, lightning.handlers = [at_root], [own]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_library_logs()
            rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
            rank_zero.info("GPU available: False, used: False")
            rank_zero.info("💡 Tip: For seamless cloud logging, try installing litlogger")
            warnings.warn(
                "`isinstance(treespec, LeafSpec)` is deprecated, use `...` instead.",
                FutureWarning,
                stacklevel=1,
            )
        printed = at_root.lines + own.lines
        assert printed == ["GPU available: False, used: False"]
        assert not [w for w in caught if "LeafSpec" in str(w.message)]
    finally:
        root.handlers, lightning.handlers, lightning.propagate = saved
