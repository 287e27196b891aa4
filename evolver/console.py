"""The rich console every command prints through: on a terminal, its width; into a pipe or a file, a fixed wide
width (or $COLUMNS), so that nothing a table shows is cut to rich's default of 80 columns."""

from __future__ import annotations

import os
import sys

from rich.console import Console

PIPE_WIDTH = 200  # columns when the output is not a terminal and $COLUMNS is unset


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    columns = os.environ.get("COLUMNS", "")
    return Console(stderr=stderr, width=int(columns) if columns.isdigit() and int(columns) > 0 else PIPE_WIDTH)
