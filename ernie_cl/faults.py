"""Fault injection, so tests can kill or starve a real run at an exact point.

Set ``ERNIE_CL_FAULT`` to ``ACTION@POINT[:DETAIL]`` (several separated by commas); unset, every
call here is a dictionary lookup that does nothing. Points the trainer passes:

- ``step:N``               right after optimizer step N (and its metrics line) is done;
- ``checkpoint-files:TAG`` while checkpoint TAG is being written: its engine files are on disk,
  its completion marker is not;
- ``checkpoint-swap:TAG``  while checkpoint TAG is written again over an existing one: the old
                           copy is moved aside, the new one not yet in place;
- ``checkpoint-done:TAG``  right after checkpoint TAG is complete and the pointer names it;
- ``loss:N``               step N's combined loss, before the backward pass (action ``nan`` only).

Points of data preparation:

- ``corpus-shard:PASS:N``  right after corpus shard N of PASS (``pass1``: parsing, ``final``: phrase
                           spans) and its marker are written;
- ``example-shard:TASK/SPLIT:N``  right after example shard N of a task's split is written.

Actions: ``kill`` (SIGKILL to the own process: no cleanup, no flushing, as in a power cut or the
OOM killer), ``term`` / ``int`` (SIGTERM / SIGINT to the own process, as from a scheduler or
Ctrl-C), ``enospc`` (an ``OSError`` "No space left on device", as from a full disk) and ``nan``
(the loss becomes NaN, as from an overflow or a bad batch).
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "ERNIE_CL_FAULT"


def _armed() -> dict[str, str]:
    faults = {}
    for item in filter(None, (s.strip() for s in os.environ.get(ENV, "").split(","))):
        action, _, point = item.partition("@")
        faults[point] = action
    return faults


def action_at(point: str) -> str | None:
    """The action armed at ``point`` (e.g. ``"step:7"``), or None."""
    return _armed().get(point) if ENV in os.environ else None


def inject(point: str) -> None:
    """Carry out the fault armed at ``point``, if any."""
    action = action_at(point)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action in ("term", "int"):
        os.kill(os.getpid(), signal.SIGTERM if action == "term" else signal.SIGINT)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"(injected at {point})")
