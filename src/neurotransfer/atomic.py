"""Atomic outputs: build the new version beside the old one, then swap them by renames.

``atomic_directory(target)`` yields an empty hidden folder; when the block succeeds the folder
replaces `target` in three renames-and-deletes, never deleting the previous version first:

1. ``target`` -> ``.<name>.old-<pid>-<random>`` (the previous output, intact, under a hidden name),
2. ``.<name>.tmp-<pid>-<random>`` -> ``target`` (the new output, complete),
3. the ``.old`` folder is deleted.

A failure at step 1 or 2 (a monkeypatched ``os.replace``, EBUSY, ENOSPC...) renames the previous
output back, so a failed run leaves it byte-identical; a kill -9 between steps 1 and 2 leaves it
under ``.old``, and the next ``output_lock`` or write of the same target renames it back before
anything else. ``atomic_directories`` does the same for several folders at once: all of them
are swapped, or none.

A target that is a mount point, or a symlink to a folder, cannot be renamed away (EBUSY, or the
link would be replaced by a plain folder). There the new version is staged in a hidden subfolder
*inside* the target, and the swap moves entries: the previous top-level entries into a hidden
``.old`` subfolder, then the new ones in (subfolders first, files last, so an index file such as
``manifest.csv`` arrives after the data it lists), then ``.old`` is deleted. Each move is an
atomic rename and a failure moves everything back, but the set of moves is not one atomic step:
a kill -9 during them can leave a mixture of old and new entries, which the next run replaces
(the preprocess cache verifies every array it reuses). ``lost+found`` is left where it is.

Temporaries carry the pid of the run that made them: a write removes only those of dead
processes (and those of older versions, named ``.<name>.<8 random characters>``), never the
temporary folder of a run still going. ``output_lock`` serialises whole runs on one output.

Unwritable locations (read-only, permission denied, disk full, quota, busy) raise
``OutputError`` with one line naming the path and the cause.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not serialised there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# After ".<target name>.": a temporary of this version (kind, pid, random) or of older versions.
_TEMP_NAME = re.compile(r"(?P<kind>tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+")
_LEGACY_TEMP_NAME = re.compile(r"[A-Za-z0-9_]{8}")
# Entries of a mount point that belong to the file system, not to the output.
_FILE_SYSTEM_ENTRIES = frozenset({"lost+found"})

_CAUSE_HINTS = {
    errno.EROFS: "the location is read-only",
    errno.EACCES: "no write permission there",
    errno.EPERM: "no write permission there",
    errno.ENOSPC: "the disk is full; free some space or point the output elsewhere",
    errno.EDQUOT: "the disk quota is used up",
    errno.EBUSY: "it is in use (a mount point?)",
}


class OutputError(OSError):
    """An output location that cannot be written; the message names the path and the cause.

    An ``OSError`` (without errno) so that callers and the CLI treat it as the I/O failure it is.
    """


class OutputLocked(OutputError):
    """Another live run holds the output's lock."""


def _output_error(path: Path, exc: OSError) -> OutputError:
    cause = os.strerror(exc.errno) if exc.errno else str(exc)
    hint = _CAUSE_HINTS.get(exc.errno or 0)
    return OutputError(
        f"{path}: cannot write the output: {cause}"
        + (f" ({hint})" if hint else "")
        + "; the previous output is unchanged"
    )


def _is_output_problem(exc: OSError, staging: Sequence[Path]) -> bool:
    """Whether an error raised while filling the staging folders is about writing them."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True  # only writes fill a disk; a write error often names no file
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and exc.filename:
        written = Path(os.fsdecode(exc.filename)).absolute()
        return any(written.is_relative_to(folder.absolute()) for folder in staging)
    return False


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _temp_prefix(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{os.getpid()}-"


def _is_stale(suffix: str) -> bool:
    """Whether a temporary (its name after ``.<target>.``) belongs to no live run."""
    match = _TEMP_NAME.fullmatch(suffix)
    if match:
        return not _pid_alive(int(match["pid"]))
    return _LEGACY_TEMP_NAME.fullmatch(suffix) is not None


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    if path.exists():
        log.warning("%s: could not delete it all; the next write of its target retries", path)


def _remove_stale(target: Path, folder: Path | None = None) -> None:
    """Delete temporaries of `target` in `folder` (its parent) left by dead runs.

    A stale ``.old`` whose target is missing is a run killed between its two renames: it is the
    previous output, so it is renamed back rather than deleted.
    """
    folder = target.parent if folder is None else folder
    prefix = f".{target.name}."
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        suffix = entry.name[len(prefix) :]
        if not entry.name.startswith(prefix) or not _is_stale(suffix):
            continue
        target_missing = not (target.exists() or target.is_symlink())
        if folder == target.parent and suffix.startswith("old-") and target_missing:
            log.warning("%s: restoring the previous output left by an interrupted run", target)
            try:
                os.replace(entry, target)
            except OSError as exc:
                raise _output_error(target, exc) from exc
            continue
        _remove_tree(entry)


def _writes_in_place(target: Path) -> bool:
    """Mount points and symlinked folders are filled from inside (see the module docstring)."""
    if not target.is_dir():
        return False
    return target.is_symlink() or os.path.ismount(target)


class _StagedDirectory:
    """One target's staging folder and the renames that swap it in (or back out)."""

    def __init__(self, target: Path) -> None:
        self.target = target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.in_place = _writes_in_place(target)
            home = target if self.in_place else target.parent
            _remove_stale(target, home)
            self.tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target, "tmp"), dir=home))
        except OutputError:
            raise
        except OSError as exc:
            raise _output_error(target, exc) from exc
        self.old: Path | None = None
        self.moved_out: list[str] = []
        self.moved_in: list[str] = []

    def _old_name(self, folder: Path) -> Path:
        return folder / f"{_temp_prefix(self.target, 'old')}{secrets.token_hex(4)}"

    def swap_in(self) -> None:
        """Put the new version in place, keeping the previous one in ``self.old``.

        On failure everything done so far is undone before the error propagates.
        """
        if self.in_place:
            self._move_entries_in()
            return
        if self.target.exists() or self.target.is_symlink():
            self.old = self._old_name(self.target.parent)
            os.replace(self.target, self.old)
        try:
            os.replace(self.tmp, self.target)
        except BaseException:
            self._restore_old()
            raise

    def _move_entries_in(self) -> None:
        self.old = self._old_name(self.target)
        self.old.mkdir()
        own_prefix = f".{self.target.name}."
        previous = sorted(
            entry.name
            for entry in self.target.iterdir()
            if not entry.name.startswith(own_prefix) and entry.name not in _FILE_SYSTEM_ENTRIES
        )
        # Subfolders first, files last: an index file (manifest.csv) lands after its data.
        new = sorted(self.tmp.iterdir(), key=lambda entry: (not entry.is_dir(), entry.name))
        try:
            for name in previous:
                os.replace(self.target / name, self.old / name)
                self.moved_out.append(name)
            for entry in new:
                os.replace(entry, self.target / entry.name)
                self.moved_in.append(entry.name)
        except BaseException:
            self.undo()
            raise

    def _restore_old(self) -> None:
        if self.old is None:
            return
        try:
            os.replace(self.old, self.target)
        except OSError as exc:
            raise OutputError(
                f"{self.target}: the swap failed and so did putting the previous output back "
                f"({os.strerror(exc.errno or 0)}); it is intact in {self.old}: rename it back"
            ) from exc
        self.old = None

    def undo(self) -> None:
        """Reverse a completed (or, in place, partial) ``swap_in``."""
        if self.in_place:
            assert self.old is not None
            for name in reversed(self.moved_in):
                os.replace(self.target / name, self.tmp / name)
            for name in reversed(self.moved_out):
                os.replace(self.old / name, self.target / name)
            self.moved_in, self.moved_out = [], []
            self.old.rmdir()
            self.old = None
            return
        if self.target.exists():
            os.replace(self.target, self.tmp)
        self._restore_old()

    def finish(self) -> None:
        """Delete the previous version; failures only leave a stale folder for later."""
        if self.old is not None:
            _remove_tree(self.old)
        if self.in_place:
            _remove_tree(self.tmp)

    def discard(self) -> None:
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)


@contextmanager
def atomic_directories(targets: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Yield one empty staging folder per target; all replace their targets, or none does.

    An ``OSError`` about writing (disk full, read-only, permission, busy) becomes
    ``OutputError``; any failure leaves every previous output as it was.
    """
    staged: list[_StagedDirectory] = []
    try:
        for target in targets:
            staged.append(_StagedDirectory(Path(target)))
    except BaseException:
        for stage in staged:
            stage.discard()
        raise
    try:
        yield [stage.tmp for stage in staged]
    except BaseException as exc:
        for stage in staged:
            stage.discard()
        if isinstance(exc, OSError) and _is_output_problem(exc, [s.tmp for s in staged]):
            named = [s.target for s in staged if exc.filename and _is_output_problem(exc, [s.tmp])]
            raise _output_error((named or [staged[0].target])[0], exc) from exc
        raise
    swapped: list[_StagedDirectory] = []
    current = staged[0]
    try:
        for current in staged:
            current.swap_in()
            swapped.append(current)
    except BaseException as exc:
        for stage in reversed(swapped):
            stage.undo()
        for stage in staged:
            stage.discard()
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise _output_error(current.target, exc) from exc
        raise
    for stage in staged:
        stage.finish()


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces `target` when the block succeeds."""
    with atomic_directories([target]) as (tmp,):
        yield tmp


@contextmanager
def output_lock(target: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on writing `target` for the block; yield the lock file's path.

    The lock file is ``.<name>.lock`` beside the target (inside it when the parent is not
    writable, e.g. a mount point under a read-only folder); it holds the holder's pid and is
    deleted on release. A second holder fails at once with ``OutputLocked`` naming the lock
    file and that pid. ``flock`` dies with its process, so the file left by a killed run never
    blocks. Holding the lock, stale temporaries of the target are cleared first (an interrupted
    swap's previous output is restored).
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _output_error(target, exc) from exc
    lock_path = target.parent / f".{target.name}.lock"
    try:
        fd = _locked_file(target, lock_path)
    except OutputLocked:
        raise
    except OSError as exc:
        if not target.is_dir() or exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise _output_error(lock_path, exc) from exc
        lock_path = target / f".{target.name}.lock"
        try:
            fd = _locked_file(target, lock_path)
        except OutputLocked:
            raise
        except OSError as inner:
            raise _output_error(target, inner) from inner
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _remove_stale(target)
        if _writes_in_place(target):
            _remove_stale(target, target)
        yield lock_path
    finally:
        # Unlink while still holding it: a run that opened this file meanwhile finds, once it
        # gets the lock, that the path no longer names it and starts over on a fresh file.
        lock_path.unlink(missing_ok=True)
        os.close(fd)  # releases the lock


def _locked_file(target: Path, lock_path: Path) -> int:
    """Open `lock_path` and take its exclusive lock; the descriptor, or ``OutputLocked``."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputLocked(
                f"{target}: another run is writing it now (pid {holder}, lock file "
                f"{lock_path}); wait for it to finish, or stop it, and run again"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(lock_path)
        except FileNotFoundError:
            current = None
        opened = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (
            opened.st_dev,
            opened.st_ino,
        ):
            return fd
        os.close(fd)  # the previous holder deleted this file on release: take the new one


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path, "tmp"), dir=path.parent)
    except OutputError:
        raise
    except OSError as exc:
        raise _output_error(path, exc) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in _CAUSE_HINTS:
            raise _output_error(path, exc) from exc
        raise
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """JSON with sorted keys; NaN/inf are refused (convert them to null first)."""
    return write_text_atomic(
        path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    )


#: The note a stage writes into each of its output folders when it decides not to run (the
#: phantom cohort for real data, the diffusion model for a source that reads no synthetic pool).
SKIPPED_NOTE = "SKIPPED.md"


def write_skipped_notes(folders: Sequence[str | Path], stage: str, reason: str) -> None:
    """Replace each of `folders` by a folder holding only :data:`SKIPPED_NOTE`, saying
    ``<stage> skipped: <reason>`` (each folder swapped in atomically)."""
    for folder in folders:
        with atomic_directory(folder) as staged:
            (staged / SKIPPED_NOTE).write_text(f"{stage} skipped: {reason}\n", encoding="utf-8")
