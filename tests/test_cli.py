"""The `neurotransfer` command: one subcommand per stage, clear errors on bad parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from neurotransfer.cli import STAGES, build_parser, main


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
