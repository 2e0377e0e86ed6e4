"""The preprocess cache under damage and interruption: damaged arrays are recomputed, never reused;
a killed run loses nothing and leaves no workers; a re-run matches an uninterrupted run byte for
byte; two runs on one folder do not collide."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import neurotransfer.data.preprocessing as preprocessing
from neurotransfer.atomic import OutputError, OutputLocked, output_lock
from neurotransfer.config import DataSettings, PreprocessSettings
from neurotransfer.data.cache import cached_array_problem, file_sha256
from neurotransfer.data.manifest import read_manifest
from neurotransfer.stages.preprocess import run_preprocess

from .test_pipeline import _downstream, _settings

REPO_ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = ("data/processed", "reports/qc")


def outputs(root: Path) -> dict[str, bytes]:
    """Every file the stage writes (arrays, manifest, QC table; not the PNG montages, whose
    matplotlib metadata is not ours) -> its bytes."""
    files = {}
    for output in OUTPUTS:
        for path in sorted((root / output).rglob("*")):
            if path.is_file() and path.suffix != ".png":
                files[str(path.relative_to(root))] = path.read_bytes()
    return files


def leftovers(root: Path) -> list[str]:
    return [
        p.name
        for output in OUTPUTS
        for p in (root / output).parent.iterdir()
        if p.name.startswith(f".{Path(output).name}.")
    ]


def small_study(tmp_path: Path, n: int = 4, workers: int = 1) -> DataSettings:
    _downstream(tmp_path / "raw" / "adni", n=n)
    settings = _settings(tmp_path, adni={"path": "raw/adni", "role": "downstream"})
    return settings.model_copy(
        update={"preprocess": PreprocessSettings(registration=False, workers=workers)}
    )


def test_cached_array_problems_are_named(tmp_path: Path) -> None:
    shape = (4, 5, 6)
    folder = tmp_path
    sound = folder / "sound.npy"
    np.save(sound, np.ones(shape, np.float16))
    assert cached_array_problem(sound, shape) == ("", file_sha256(sound))
    assert cached_array_problem(sound, shape, file_sha256(sound))[0] == ""
    assert (
        "shape (4, 5, 6), not the target grid (4, 5, 7)"
        in cached_array_problem(sound, (4, 5, 7))[0]
    )
    np.save(folder / "f32.npy", np.ones(shape, np.float32))
    assert "dtype float32, not float16" in cached_array_problem(folder / "f32.npy", shape)[0]
    truncated = folder / "truncated.npy"
    truncated.write_bytes(sound.read_bytes()[:-10])
    assert "truncated" in cached_array_problem(truncated, shape)[0]
    (folder / "junk.npy").write_bytes(b"not numpy")
    assert "unreadable .npy" in cached_array_problem(folder / "junk.npy", shape)[0]
    flipped = folder / "flipped.npy"
    flipped.write_bytes(sound.read_bytes()[:-2] + np.float16(2.0).tobytes())  # same size
    problem, _ = cached_array_problem(flipped, shape, file_sha256(sound))
    assert problem == "content differs from the sha256 recorded in the manifest"


@pytest.mark.slow
def test_damaged_cached_arrays_are_recomputed_reported_and_never_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = small_study(tmp_path)
    run_preprocess(settings, tmp_path, progress=False)
    good = outputs(tmp_path)
    manifest = read_manifest(tmp_path / "data/processed/manifest.csv").set_index("subject_id")
    for path, digest in zip(manifest["path"], manifest["array_sha256"], strict=True):
        assert digest == file_sha256(tmp_path / path)

    # One truncated array (it is in a QC montage: reading it crashed every re-run) and one
    # with the right size but other bytes (only the recorded sha256 tells).
    truncated = tmp_path / manifest.loc["sub-d00", "path"]
    truncated.write_bytes(truncated.read_bytes()[:1000])
    overwritten = tmp_path / manifest.loc["sub-d03", "path"]
    data = bytearray(overwritten.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 100] = bytes(b ^ 0x55 for b in data[middle : middle + 100])
    overwritten.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING):
        metrics = run_preprocess(settings, tmp_path, progress=False)
    assert metrics["timing"]["n_computed"] == 2 and metrics["timing"]["n_reused"] == 2
    damaged = {d["scan_id"]: d["problem"] for d in metrics["damaged_cache"]["scans"]}
    assert metrics["damaged_cache"]["n"] == 2
    assert "truncated" in damaged["sub-d00"]
    assert "sha256" in damaged["sub-d03"]
    assert sum("damaged cached array" in r.getMessage() for r in caplog.records) == 2
    assert outputs(tmp_path) == good  # recomputed, byte-identical, manifest included


def kill_after_some_scans(tmp_path: Path, settings: DataSettings) -> None:
    """Start the stage in a subprocess with 2 workers, one scan hanging; SIGKILL it part-way.

    Asserts that the workers die with it and that nothing was published.
    """
    script = """
import os, sys, time
from pathlib import Path
import neurotransfer.data.preprocessing as preprocessing
from neurotransfer.config import DataSettings
from neurotransfer.stages.preprocess import run_preprocess
root = Path(sys.argv[1])
real = preprocessing.preprocess_scan
def traced(source, space, seed):
    (root / f"worker-{os.getpid()}").touch()
    if "sub-d04" in source:
        time.sleep(600)  # a slow scan: the kill comes while it runs
    return real(source, space, seed)
preprocessing.preprocess_scan = traced
run_preprocess(DataSettings.model_validate_json(sys.argv[2]), root, progress=False)
"""
    stage = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path), settings.model_dump_json()],
        cwd=REPO_ROOT,
    )
    deadline = time.monotonic() + 60
    staged: list[Path] = []
    while time.monotonic() < deadline and stage.poll() is None:
        staged = list((tmp_path / "data").glob(".processed.tmp-*/adni/*.npy"))
        if len(staged) >= 3 and len(list(tmp_path.glob("worker-*"))) >= 2:
            break
        time.sleep(0.1)
    assert stage.poll() is None and len(staged) >= 3, "the stage did not get part-way"
    workers = [int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")]
    stage.send_signal(signal.SIGKILL)
    stage.wait()

    def alive(pid: int) -> bool:
        """Still running, or a zombie leader whose other threads (holding its files) still exit."""
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return True
            return len(os.listdir(f"/proc/{pid}/task")) > 1
        except (psutil.NoSuchProcess, FileNotFoundError):
            return False

    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = [pid for pid in workers if alive(pid)]
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    assert not orphans, f"worker processes outlived the killed stage: {orphans}"
    assert not (tmp_path / "data/processed").exists()  # nothing half-written was published


@pytest.mark.slow
def test_stage_killed_part_way_leaves_no_workers_and_a_rerun_matches_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    settings = small_study(tmp_path, n=6, workers=2)
    run_preprocess(settings, tmp_path, progress=False)
    uninterrupted = outputs(tmp_path)
    for output in OUTPUTS:
        shutil.rmtree(tmp_path / output)

    kill_after_some_scans(tmp_path, settings)
    metrics = run_preprocess(settings, tmp_path, progress=False)
    assert metrics["timing"]["n_computed"] == 6
    assert outputs(tmp_path) == uninterrupted  # arrays and manifest, byte for byte
    assert leftovers(tmp_path) == []  # the killed run's temporary folder is gone too


@pytest.mark.slow
def test_interrupted_rerun_keeps_the_previous_outputs_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = small_study(tmp_path)
    run_preprocess(settings, tmp_path, progress=False)
    previous = outputs(tmp_path)

    # A setting changes, so every scan is recomputed; the run is interrupted after two scans.
    regridded = settings.model_copy(
        update={"preprocess": PreprocessSettings(registration=False, workers=1, shape=(36, 44, 36))}
    )
    real = preprocessing.preprocess_scan
    done: list[str] = []

    def interrupted_after_two(source: str, space: object, seed: int) -> object:
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(source)
        return real(source, space, seed)

    monkeypatch.setattr(preprocessing, "preprocess_scan", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_preprocess(regridded, tmp_path, progress=False)
    assert outputs(tmp_path) == previous
    assert leftovers(tmp_path) == []

    monkeypatch.setattr(preprocessing, "preprocess_scan", real)
    run_preprocess(regridded, tmp_path, progress=False)
    resumed = outputs(tmp_path)
    for output in OUTPUTS:
        shutil.rmtree(tmp_path / output)
    run_preprocess(regridded, tmp_path, progress=False)
    assert outputs(tmp_path) == resumed


@pytest.mark.slow
def test_a_full_disk_stops_the_run_clearly_and_keeps_the_previous_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neurotransfer.data import worker

    settings = small_study(tmp_path, n=2)
    run_preprocess(settings, tmp_path, progress=False)
    previous = outputs(tmp_path)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    regridded = settings.model_copy(
        update={"preprocess": PreprocessSettings(registration=False, workers=1, shape=(36, 44, 36))}
    )
    monkeypatch.setattr(worker.np, "save", disk_full)
    with pytest.raises(OutputError, match=r"data/processed: cannot write the output: No space"):
        run_preprocess(regridded, tmp_path, progress=False)
    assert outputs(tmp_path) == previous
    assert leftovers(tmp_path) == []


def test_a_second_run_on_the_same_folder_stops_at_once(tmp_path: Path) -> None:
    settings = small_study(tmp_path, n=2)
    with output_lock(tmp_path / "data/processed") as lock_file:
        start = time.perf_counter()
        with pytest.raises(OutputLocked, match="another run is writing it now") as raised:
            run_preprocess(settings, tmp_path, progress=False)
        assert time.perf_counter() - start < 1.0
        assert str(lock_file) in str(raised.value)
    assert not (tmp_path / "data/processed").exists()


@pytest.mark.slow
def test_symlinked_processed_folder_is_written_through_the_link(tmp_path: Path) -> None:
    settings = small_study(tmp_path, n=3)
    elsewhere = tmp_path / "scratch-disk"
    elsewhere.mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data/processed").symlink_to(elsewhere, target_is_directory=True)
    run_preprocess(settings, tmp_path, progress=False)
    metrics = run_preprocess(settings, tmp_path, progress=False)
    assert metrics["timing"]["n_reused"] == 3
    assert (tmp_path / "data/processed").is_symlink()
    manifest = read_manifest(elsewhere / "manifest.csv")
    assert all((tmp_path / p).is_file() for p in manifest["path"])
    assert sorted(p.name for p in elsewhere.iterdir()) == ["adni", "manifest.csv"]


def test_unwritable_output_is_one_error_line_from_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from neurotransfer import cli

    monkeypatch.chdir(tmp_path)
    Path("data").write_text("a file where the output folder's parent should be\n")
    status = cli.main(["--params", str(REPO_ROOT / "params.yaml"), "preprocess", "--no-progress"])
    error = capsys.readouterr().err
    assert status == 1
    assert re.fullmatch(
        r"error: preprocess: data/processed: cannot write the output: (File exists|Not a "
        r"directory); the previous output is unchanged\n",
        error,
    )
    assert not Path("metrics").exists()
