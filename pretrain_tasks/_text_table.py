"""A split's texts (sentences, passages) in one UTF-8 buffer with offsets, for the tasks that draw
texts from other documents.

A list of Python strings costs an object per text and, in forked worker processes, copies the pages
it touches (reference counts change on every read); here a text costs its bytes and one offset, and
the buffer's pages stay shared. The module name starts with ``_`` so registry discovery skips it.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import numpy as np

from ernie_cl.corpus.store import id_hash


class TextTable(Sequence):
    """Append-only texts, read back by position; equal to a list of the same strings."""

    def __init__(self) -> None:
        self._bytes = bytearray()
        self._offsets = array("q", [0])

    def append(self, text: str) -> None:
        self._bytes += text.encode("utf-8")
        self._offsets.append(len(self._bytes))

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("text index out of range")
        return self._bytes[self._offsets[index]: self._offsets[index + 1]].decode("utf-8")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, TextTable)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented


class RunsById:
    """Each document's run [start, end) of positions in a TextTable, found by its id's hash (8 bytes
    and two offsets a document, where a dict by id string would keep every id)."""

    def __init__(self) -> None:
        self._hashes, self._starts, self._ends = array("Q"), array("q"), array("q")
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, doc_id: str, start: int, end: int) -> None:
        self._hashes.append(id_hash(doc_id))
        self._starts.append(start)
        self._ends.append(end)
        self._sorted = None

    def __len__(self) -> int:
        return len(self._hashes)

    def freeze(self) -> None:
        """Sort the hashes once (call when every run is added, before workers fork)."""
        if self._sorted is None:
            hashes = np.frombuffer(self._hashes, dtype=np.uint64) if len(self._hashes) else np.zeros(0, np.uint64)
            order = np.argsort(hashes, kind="stable")
            runs = np.stack([np.frombuffer(self._starts, np.int64), np.frombuffer(self._ends, np.int64)], 1) \
                if len(self._hashes) else np.zeros((0, 2), np.int64)
            self._sorted = (hashes[order], runs[order])

    def get(self, doc_id: str) -> range:
        """The document's run, or an empty range(0, 0) for a document that added none."""
        self.freeze()
        hashes, runs = self._sorted
        key = np.uint64(id_hash(doc_id))
        at = int(np.searchsorted(hashes, key))
        if at < len(hashes) and hashes[at] == key:
            return range(int(runs[at, 0]), int(runs[at, 1]))
        return range(0, 0)
