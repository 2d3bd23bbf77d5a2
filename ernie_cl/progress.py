"""Progress bars that suit both a terminal and a log file."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(**kwargs: Any):
    """A tqdm bar; redrawn often on a terminal, but in a log file (where every redraw is kept) at
    most every 30 seconds."""
    from tqdm.auto import tqdm

    interval = 0.1 if sys.stderr.isatty() else 30.0
    kwargs.setdefault("mininterval", interval)
    kwargs.setdefault("maxinterval", max(10.0, interval))
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(**kwargs)
