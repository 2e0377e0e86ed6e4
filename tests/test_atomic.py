"""Atomic output folders: swaps that never lose the previous version, mount points and symlinked
folders, unwritable locations, stale temporaries of dead runs only, and the output lock."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from neurotransfer import atomic
from neurotransfer.atomic import (
    OutputError,
    OutputLocked,
    atomic_directories,
    atomic_directory,
    output_lock,
    write_json_atomic,
)

REAL_REPLACE = os.replace


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) -> its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def write_version(folder: Path, version: str) -> None:
    (folder / "part").mkdir(parents=True, exist_ok=True)
    (folder / "part" / "array.bin").write_bytes(version.encode() * 100)
    (folder / "manifest.csv").write_text(f"version,{version}\n")


def make_previous(target: Path) -> dict[str, bytes]:
    with atomic_directory(target) as tmp:
        write_version(tmp, "old")
    return snapshot(target)


def fail_on_call(monkeypatch: pytest.MonkeyPatch, failing_call: int, error: int) -> list[tuple]:
    """Make the `failing_call`-th ``os.replace`` (0-based) raise OSError(`error`); log calls."""
    calls: list[tuple] = []

    def replace(source: object, destination: object) -> None:
        calls.append((source, destination))
        if len(calls) - 1 == failing_call:
            raise OSError(error, os.strerror(error), str(source))
        REAL_REPLACE(source, destination)

    monkeypatch.setattr(os, "replace", replace)
    return calls


def hidden_leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


def test_replaces_the_previous_version_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "out" / "processed"
    make_previous(target)
    with atomic_directory(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".processed.tmp-")
        write_version(tmp, "new")
    assert (target / "manifest.csv").read_text() == "version,new\n"
    assert hidden_leftovers(target.parent, "processed") == []


@pytest.mark.parametrize("error", [errno.EBUSY, errno.ENOSPC, errno.EROFS])
@pytest.mark.parametrize("failing_call", [0, 1], ids=["target-to-old", "tmp-to-target"])
def test_a_failed_swap_leaves_the_previous_output_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_call: int, error: int
) -> None:
    target = tmp_path / "processed"
    before = make_previous(target)
    calls = fail_on_call(monkeypatch, failing_call, error)
    with pytest.raises(OutputError) as raised, atomic_directory(target) as tmp:
        write_version(tmp, "new")
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{target}: cannot write the output")
    assert os.strerror(error) in message and "previous output is unchanged" in message
    assert len(calls) >= failing_call + 1
    assert snapshot(target) == before
    assert hidden_leftovers(tmp_path, "processed") == []


def test_a_failure_swapping_the_second_folder_puts_the_first_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "data" / "processed", tmp_path / "reports" / "qc"
    before = make_previous(first), make_previous(second)
    # Calls: first -> old, tmp -> first, second -> old (fails).
    fail_on_call(monkeypatch, 2, errno.EBUSY)
    with (
        pytest.raises(OutputError, match="qc: cannot write"),
        atomic_directories([first, second]) as (tmp_first, tmp_second),
    ):
        write_version(tmp_first, "new")
        write_version(tmp_second, "new")
    assert (snapshot(first), snapshot(second)) == before
    assert hidden_leftovers(first.parent, "processed") == []
    assert hidden_leftovers(second.parent, "qc") == []


def test_disk_full_while_writing_is_one_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "processed"
    before = make_previous(target)
    full = r"processed: cannot write the output: No space left"
    with pytest.raises(OutputError, match=full), atomic_directory(target) as tmp:
        write_version(tmp, "new")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what a full disk raises
    assert snapshot(target) == before
    assert hidden_leftovers(tmp_path, "processed") == []


def test_read_only_location_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(*args: object, **kwargs: object) -> str:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path))

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", read_only)
    read_only_error = r"processed: cannot write the output: Read-only file"
    with (
        pytest.raises(OutputError, match=read_only_error),
        atomic_directory(tmp_path / "processed"),
    ):
        pass
    assert not (tmp_path / "processed").exists()


def test_other_errors_of_the_block_pass_through_unchanged(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), atomic_directory(tmp_path / "processed"):
        (tmp_path / "missing-input").read_bytes()
    with pytest.raises(KeyboardInterrupt), atomic_directory(tmp_path / "processed"):
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def mount_point(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    real_ismount = os.path.ismount

    def ismount(path: object) -> bool:
        return Path(os.fspath(path)) == target or real_ismount(path)

    monkeypatch.setattr(os.path, "ismount", ismount)


def test_mount_point_is_filled_from_inside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "processed"
    make_previous(target)
    (target / "part" / "only-in-old.bin").write_bytes(b"x")
    (target / "lost+found").mkdir()  # the file system's, not the output's
    mount_point(monkeypatch, target)
    inode = target.stat().st_ino

    def no_rename_of_the_mount(source: object, destination: object) -> None:
        if Path(os.fspath(source)) == target:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(source))
        REAL_REPLACE(source, destination)

    monkeypatch.setattr(os, "replace", no_rename_of_the_mount)
    with atomic_directory(target) as tmp:
        assert tmp.parent == target  # staged inside the mount: renames stay on its file system
        write_version(tmp, "new")
    assert target.stat().st_ino == inode
    assert sorted(p.name for p in target.iterdir()) == ["lost+found", "manifest.csv", "part"]
    assert snapshot(target) == {
        "manifest.csv": b"version,new\n",
        "part/array.bin": b"new" * 100,
    }


@pytest.mark.parametrize("failing_call", [0, 1, 2], ids=["first-out", "second-out", "first-in"])
def test_mount_point_failed_moves_are_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_call: int
) -> None:
    target = tmp_path / "processed"
    before = make_previous(target)
    mount_point(monkeypatch, target)
    fail_on_call(monkeypatch, failing_call, errno.ENOSPC)
    with pytest.raises(OutputError, match="No space left"), atomic_directory(target) as tmp:
        write_version(tmp, "new")
    assert snapshot(target) == before
    assert hidden_leftovers(target, "processed") == []


def test_symlinked_output_folder_stays_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "big-disk" / "processed"
    real.mkdir(parents=True)
    target = tmp_path / "data" / "processed"
    target.parent.mkdir()
    target.symlink_to(real, target_is_directory=True)
    make_previous(target)
    assert (real / "manifest.csv").read_text() == "version,old\n"

    with atomic_directory(target) as tmp:
        write_version(tmp, "new")
    assert target.is_symlink() and target.resolve() == real.resolve()
    assert snapshot(real) == {"manifest.csv": b"version,new\n", "part/array.bin": b"new" * 100}


def test_symlinked_output_folder_is_unchanged_by_a_failed_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "big-disk"
    real.mkdir()
    target = tmp_path / "processed"
    target.symlink_to(real, target_is_directory=True)
    before = make_previous(target)
    fail_on_call(monkeypatch, 2, errno.EIO)  # after both old entries moved out
    with pytest.raises(OutputError, match="Input/output error"), atomic_directory(target) as tmp:
        write_version(tmp, "new")
    assert target.is_symlink() and snapshot(real) == before
    assert sorted(p.name for p in real.iterdir()) == ["manifest.csv", "part"]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_only_temporaries_of_dead_runs_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "processed"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live_tmp = tmp_path / f".processed.tmp-{live.pid}-abcd1234"
        dead_tmp = tmp_path / f".processed.tmp-{dead_pid()}-abcd1234"
        legacy_tmp = tmp_path / ".processed.k3j_x9q2"  # named by earlier versions
        other_output = tmp_path / f".processed.v2.tmp-{dead_pid()}-abcd1234"
        for folder in (live_tmp, dead_tmp, legacy_tmp, other_output):
            folder.mkdir()
            (folder / "scan.npy").write_bytes(b"half")
        with atomic_directory(target) as tmp:
            write_version(tmp, "new")
        assert live_tmp.is_dir() and (live_tmp / "scan.npy").read_bytes() == b"half"
        assert other_output.is_dir()  # another output's temporary: not ours to judge
        assert not dead_tmp.exists() and not legacy_tmp.exists()
    finally:
        live.kill()
        live.wait()


def test_a_run_killed_between_its_renames_gets_its_previous_output_back(tmp_path: Path) -> None:
    target = tmp_path / "processed"
    before = make_previous(target)
    # What a kill -9 right after step 1 (target -> .old) leaves: no target, a hidden .old.
    stranded = tmp_path / f".processed.old-{dead_pid()}-0123abcd"
    target.rename(stranded)
    with output_lock(target):
        assert snapshot(target) == before
    assert not stranded.exists()


def test_second_holder_of_the_lock_stops_at_once_naming_the_lock_file(tmp_path: Path) -> None:
    target = tmp_path / "data" / "processed"
    with output_lock(target) as lock_file:
        assert lock_file == tmp_path / "data" / ".processed.lock"
        assert lock_file.read_text() == f"{os.getpid()}\n"
        with pytest.raises(OutputLocked) as raised, output_lock(target):
            pass
        message = str(raised.value)
        assert str(lock_file) in message and "another run is writing it now" in message
        assert f"pid {os.getpid()}" in message
    assert not lock_file.exists()  # released and removed
    with output_lock(target):  # and free again
        pass


LOCK_HOLDER = """
import sys, time
from neurotransfer.atomic import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_lock_of_another_process_blocks_until_it_dies(tmp_path: Path) -> None:
    target = tmp_path / "processed"
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(target)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(OutputLocked, match=f"pid {holder.pid}"), output_lock(target):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The killed holder's lock file is still there, but flock died with it: no blocking.
    assert (tmp_path / ".processed.lock").exists()
    with output_lock(target):
        pass


def test_file_writes_report_a_full_disk_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"a": 1})
    fail_on_call(monkeypatch, 0, errno.ENOSPC)
    with pytest.raises(OutputError, match=r"metrics.json: cannot write the output: No space"):
        write_json_atomic(path, {"a": 2})
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
