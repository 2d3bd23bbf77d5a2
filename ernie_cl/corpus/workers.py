"""Forked worker processes for the data path: an ordered map with a bounded number of items in flight.

Used by the corpus ingest (batches of raw documents) and by example building (document shards).
What every worker needs to read (a task, a phrase model, a folder) is set in ``SHARED`` before the
pool forks and inherited, never pickled; only the items go to the workers, and only what the
function returns comes back. At most ``in_flight`` items are submitted ahead of the one being
consumed, so a fast reader never piles its whole input up in the pipes (``Pool.imap`` would).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

SHARED: dict[str, Any] = {}


def ordered_map(function: Callable[[Any], Any], items: Iterable[Any], workers: int,
                in_flight: int | None = None, **shared: Any) -> Iterator[Any]:
    """``function(item)`` for every item, in the items' order, in ``workers`` forked processes (in
    this process for 1, or where fork is unavailable). ``shared`` is what the workers read through
    ``SHARED``. A worker that dies breaks the pool: ``BrokenProcessPool`` here, never a hang."""
    SHARED.update(shared)
    try:
        if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
            for item in items:
                yield function(item)
            return
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the Rust pool must not be used across a fork
        limit = in_flight or 2 * workers
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            pending: deque = deque()
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        SHARED.clear()
