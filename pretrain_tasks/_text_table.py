"""A split's texts (sentences, passages) in one UTF-8 file with offsets, for the tasks that draw
texts from other documents.

A list of Python strings costs an object per text in memory, and every forked worker that reads it
copies the pages it touches (reference counts change on every read). Here the texts' bytes live in
an unnamed temporary file (under ``$TMPDIR``; deleted when the table is), their end offsets in a
second one, and a text is read back with two ``pread``s (its offsets, then its bytes), so a table
costs the process a few buffers whatever the size of the corpus; the bytes are in the kernel's page
cache, reclaimable and shared by every process, not in any process's memory. (A memory map would
be as fast, but each process that touches its pages counts them in its own resident memory: a
corpus-sized table read at random by every worker.) ``extend`` appends many texts already
encoded by a worker in one write, so filling a table creates no object per text in the parent.
The module name starts with ``_`` so registry discovery skips it.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from collections.abc import Sequence

import numpy as np

from ernie_cl.corpus.store import id_hash


def encode_texts(texts: Sequence[str]) -> tuple[bytes, np.ndarray]:
    """(the texts' UTF-8 bytes end to end, each text's end offset in them): what a worker sends to
    ``TextTable.extend`` instead of the strings."""
    encoded = [t.encode("utf-8") for t in texts]
    ends = np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), dtype=np.int64)
    return b"".join(encoded), ends


class BytesTable(Sequence):
    """Append-only byte strings, read back by position (see the module docstring); ``TextTable``
    holds texts, other tables fixed records such as a query's passage range and ranking."""

    _FLUSH_BYTES = 1 << 20  # appended text (and offsets) is written to the files in blocks of this size

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="ernie-cl-texts-")
        self._ends_file = tempfile.TemporaryFile(prefix="ernie-cl-offsets-")  # int64 end of every text
        self._pending = bytearray()
        self._pending_ends = array("q")
        self._written = 0  # text bytes in the file
        self._count = 0  # texts appended
        self._flushed = 0  # ends in the file

    def append(self, row: bytes) -> None:
        self._pending += row
        self._pending_ends.append(self._written + len(self._pending))
        self._count += 1
        if len(self._pending) >= self._FLUSH_BYTES or len(self._pending_ends) >= self._FLUSH_BYTES // 8:
            self.flush()

    def extend(self, data: bytes, ends: np.ndarray) -> None:
        """Append the texts encoded as ``encode_texts`` returns them (``ends`` relative to ``data``)."""
        self.flush()
        if not len(ends):
            return
        os.pwrite(self._file.fileno(), data, self._written)
        os.pwrite(self._ends_file.fileno(), (np.asarray(ends, dtype=np.int64) + self._written).tobytes(), self._flushed * 8)
        self._written += len(data)
        self._count += len(ends)
        self._flushed += len(ends)

    def flush(self) -> None:
        """Write what is appended (call when the table is complete, before workers fork)."""
        if self._pending_ends:
            os.pwrite(self._file.fileno(), self._pending, self._written)
            os.pwrite(self._ends_file.fileno(), self._pending_ends.tobytes(), self._flushed * 8)
            self._written += len(self._pending)
            self._flushed += len(self._pending_ends)
            self._pending, self._pending_ends = bytearray(), array("q")

    @property
    def nbytes(self) -> int:
        return self._written + len(self._pending)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("text index out of range")
        return self.run(index, index + 1)[0]

    def run(self, start: int, stop: int) -> list:
        """Rows ``start`` .. ``stop - 1`` (a run, read with two ``pread``s in all): as ``self[start:stop]``."""
        self.flush()
        if not 0 <= start <= stop <= len(self):
            raise IndexError("text run out of range")
        if start == stop:
            return []
        ends = np.frombuffer(os.pread(self._ends_file.fileno(), (stop - start + (start > 0)) * 8,
                                      (start - (start > 0)) * 8), dtype=np.int64).tolist()
        if start == 0:
            ends.insert(0, 0)
        data = os.pread(self._file.fileno(), ends[-1] - ends[0], ends[0])
        base = ends[0]
        return [self._row(data[a - base:b - base]) for a, b in zip(ends, ends[1:])]

    @staticmethod
    def _row(data: bytes):
        """A stored row as it is read back (``TextTable`` decodes it)."""
        return data

    def __getstate__(self) -> dict:
        """Pickled (for a worker on another machine) with its bytes; unpickled into new files."""
        self.flush()
        return {"bytes": os.pread(self._file.fileno(), self._written, 0) if self._written else b"",
                "ends": os.pread(self._ends_file.fileno(), self._flushed * 8, 0) if self._flushed else b""}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.extend(state["bytes"], np.frombuffer(state["ends"], dtype=np.int64))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, BytesTable)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented


class TextTable(BytesTable):
    """Append-only texts, read back by position; equal to a list of the same strings."""

    def append(self, text: str) -> None:  # type: ignore[override]
        super().append(text.encode("utf-8"))

    @staticmethod
    def _row(data: bytes) -> str:
        return data.decode("utf-8")


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

    def position_of(self, index: int) -> int:
        """The ordinal (order of ``add``) of the run that holds table position ``index``, for runs
        added in position order; an empty run never holds one."""
        starts = np.frombuffer(self._starts, dtype=np.int64) if len(self._starts) else np.zeros(0, np.int64)
        return int(np.searchsorted(starts, index, side="right")) - 1
