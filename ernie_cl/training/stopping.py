"""Graceful stop on SIGTERM / SIGINT: finish the current step, checkpoint, exit with a message.

The first signal only sets a flag (the trainer checks it between steps); a second one of the same
kind gets the default behaviour back, so Ctrl-C twice still stops a run that is stuck.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Optional


class StopRequested(Exception):
    """Raised by the trainer after the stop checkpoint is written; carries the exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class GracefulStop:
    """Context manager that turns SIGTERM and SIGINT into ``self.signal_name`` (checked by the loop)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    @property
    def exit_code(self) -> int:
        return 128 + (self.received or 0)  # the shell convention for "ended by signal N"

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        self.received = signum
        print(f"\nernie-cl: {signal.Signals(signum).name} received: finishing the current step, then writing a "
              "checkpoint (send it again to stop at once)", flush=True)
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # type: ignore[arg-type]

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
