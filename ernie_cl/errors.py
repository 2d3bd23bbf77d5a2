"""User-facing errors: one line that names the problem and how to fix it.

The CLI prints ``ernie-cl: error: <message>`` and exits with ``exit_code``; the traceback is shown
only with ``--debug``. Library code raises these instead of asserting on user input.
"""

from __future__ import annotations

import difflib
from typing import Any


class ErnieClError(Exception):
    """Base class of every error that is the user's to fix or a clearly reported runtime fault."""

    exit_code = 1


class ConfigError(ErnieClError):
    """A schedule, model or DeepSpeed config (or a command-line argument) is wrong."""

    exit_code = 2


class CacheMissingError(ConfigError):
    """A process that only reads the cache (a training rank other than 0) did not find what it needs."""


class CorpusError(ErnieClError):
    """The corpus is missing, unreadable, empty, or too small for a task."""

    exit_code = 2


class TaskRegistrationError(ErnieClError):
    """A pre-training task module breaks the task protocol (raised at import time)."""

    exit_code = 1


class CheckpointError(ErnieClError):
    """A checkpoint is missing, incomplete or does not match the run."""

    exit_code = 2


class TrainingError(ErnieClError):
    """A runtime fault during training (non-finite losses, a full disk); checkpoints stay intact."""

    exit_code = 1


class DataBuildError(ErnieClError):
    """Building a task's examples failed at runtime: an error inside the task's code, or a data
    worker process that died (often killed by the system for lack of memory)."""

    exit_code = 1


def did_you_mean(word: Any, known: Any) -> str:
    """`` (did you mean 'X'?)`` for the closest of ``known`` to ``word``, or ``""``: the suffix of an
    unknown-name message. Here, below every room, so that config and the balancing and task
    registries can all use it without importing one another."""
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
