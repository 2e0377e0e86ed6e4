"""Worker processes that die with their parent.

A ``ProcessPoolExecutor`` worker whose parent is killed with SIGKILL waits on its task pipe
forever. ``die_with_parent`` (call it in the pool's initializer) prevents that twice over: on
Linux the kernel sends the worker SIGKILL when its parent exits (``prctl(PR_SET_PDEATHSIG)``),
and on every platform a daemon thread exits the worker within ``poll_s`` once its parent pid
changes (the orphan is re-parented).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, poll_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(1)  # orphaned: nobody will read our results


def die_with_parent(creator_pid: int | None = None, poll_s: float = 1.0) -> None:
    """Make this (worker) process exit when its parent process dies.

    `creator_pid` is the pid of the process that made the pool: if it is already gone when the
    worker starts (it died before the death signal was armed), the worker exits at once. The
    parent watched is the worker's actual parent (a fork server's children have the server).
    """
    armed = _set_parent_death_signal()
    parent = os.getppid()
    if creator_pid is not None and not _pid_alive(creator_pid):
        os._exit(1)
    if parent == 1 and creator_pid not in (None, 1):
        os._exit(1)  # already re-parented to init
    threading.Thread(
        target=_watch_parent, args=(parent, poll_s), name="die-with-parent", daemon=True
    ).start()
    log.debug("worker %d bound to parent %d (death signal: %s)", os.getpid(), parent, armed)
