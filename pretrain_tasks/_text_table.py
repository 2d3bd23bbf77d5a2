"""A split's texts (sentences, passages) in one UTF-8 file with offsets, for the tasks that draw
texts from other documents.

A list of Python strings costs an object per text in memory, and every forked worker that reads it
copies the pages it touches (reference counts change on every read). Here the texts' bytes live in
an unnamed temporary file (under ``$TMPDIR``; deleted when the table is) and a text is read back
with one ``pread`` at its offset, so a table costs the process 8 bytes a text whatever the size of
the corpus; the bytes are in the kernel's page cache, reclaimable and shared by every process,
not in any process's memory. (A memory map would be as fast, but each process that touches its
pages counts them in its own resident memory: a corpus-sized table read at random by every worker.)
The module name starts with ``_`` so registry discovery skips it.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from collections.abc import Sequence

import numpy as np

from ernie_cl.corpus.store import id_hash


class TextTable(Sequence):
    """Append-only texts, read back by position; equal to a list of the same strings."""

    _FLUSH_BYTES = 1 << 20  # appended text is written to the file in blocks of this size

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="ernie-cl-texts-")
        self._offsets = array("q", [0])
        self._pending = bytearray()
        self._written = 0

    def append(self, text: str) -> None:
        self._pending += text.encode("utf-8")
        self._offsets.append(self._written + len(self._pending))
        if len(self._pending) >= self._FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write what is appended (call when the table is complete, before workers fork)."""
        if self._pending:
            os.pwrite(self._file.fileno(), self._pending, self._written)
            self._written += len(self._pending)
            self._pending = bytearray()

    @property
    def nbytes(self) -> int:
        return self._offsets[-1]

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("text index out of range")
        self.flush()
        start = self._offsets[index]
        return os.pread(self._file.fileno(), self._offsets[index + 1] - start, start).decode("utf-8")

    def __getstate__(self) -> dict:
        """Pickled (for a worker on another machine) with its bytes; unpickled into a new file."""
        self.flush()
        return {"bytes": os.pread(self._file.fileno(), self._written, 0) if self._written else b"",
                "offsets": self._offsets}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self._pending, self._offsets = bytearray(state["bytes"]), state["offsets"]
        self.flush()

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
