"""What every benchmark prints beside its figures: the machine and how busy it was."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def machine() -> str:
    """CPU model, core count, OS and Python version, in one line."""
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in info.read_text().splitlines()
            if "model name" in ln
        ]
        cpu = names[0] if names else cpu
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {sys.version.split()[0]}"
    )


def load() -> str:
    """The 1-minute load average: above 0, other processes compete for the cores."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"
