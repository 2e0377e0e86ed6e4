"""Where a command-line tool writes its text: a file, or standard output for ``-``."""

from __future__ import annotations

import sys
from pathlib import Path

STDOUT = "-"


def write_text_output(text: str, destination: str) -> None:
    """Write `text` to the file `destination` (UTF-8), or to standard output when it is ``-``."""
    if destination == STDOUT:
        sys.stdout.write(text)
    else:
        Path(destination).write_text(text, encoding="utf-8")
