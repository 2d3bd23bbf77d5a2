"""Example sets on disk: one Arrow file per document shard, written by the process that builds it.

A task's examples for one split live in ``CACHE/examples/<task>/<split>-<key>/``::

    shard-00000.arrow   the examples of document shard 0 (Arrow IPC file, memory-mapped when read)
    shard-00000.done    its completion marker: rows, bytes and SHA-256 of the .arrow file
    ...
    manifest.json       written last: the shards in order, their rows, the columns

Shards are cut from the split's documents in order, a new one when the text so far reaches
``shard_chars`` characters, so the layout depends on the corpus alone, never on the number of
workers. Each shard is built and written by one worker (nothing but a few counts travels back),
atomically: written to a temporary name, fsynced, renamed, then marked done. A build that was
killed is continued by the next call: every shard whose marker and file agree (size and SHA-256)
is kept, the log says how many, the others are built again. When loading a finished set, a shard
whose file is missing, has the wrong size or is no readable Arrow file is rebuilt with a warning.

Columns are stored compactly and read back as the tasks wrote them:

- ``input_ids`` as ``uint16`` when the vocabulary has at most 65,536 entries (else ``int32``);
- label columns in the smallest signed type that holds ``IGNORE`` (-100) and every label id;
- ``token_type_ids`` are not stored: they follow from the [SEP] positions (a token's segment is
  the number of [SEP] before it, mod 2; the layout of every shipped task). A shard in which some
  row does not follow that rule (a corpus with the literal text "[SEP]", say) keeps the column.
"""

from __future__ import annotations

import array
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ernie_cl import faults
from ernie_cl.corpus.durable import file_sha256, fsync_file, write_json_durably
from ernie_cl.errors import CorpusError, DataBuildError

FORMAT = 2
MANIFEST = "manifest.json"
IGNORE = -100
TYPES = "token_type_ids"
logger = logging.getLogger(__name__)


# --- layout -------------------------------------------------------------------------------------

def shard_bounds(char_counts: Sequence[int], shard_chars: int) -> list[tuple[int, int]]:
    """Document index ranges [start, end): a shard ends once its text reaches ``shard_chars``."""
    bounds, start, size = [], 0, 0
    for i, chars in enumerate(char_counts):
        size += chars
        if size >= shard_chars:
            bounds.append((start, i + 1))
            start, size = i + 1, 0
    if start < len(char_counts):
        bounds.append((start, len(char_counts)))
    return bounds


def column_types(columns: Sequence[str], vocab_size: int, label_sizes: dict[str, int]) -> dict[str, str]:
    """The stored integer type of every column (see the module docstring)."""
    types = {}
    for column in columns:
        if column == "input_ids":
            types[column] = "uint16" if vocab_size <= 1 << 16 else "int32"
        elif column == TYPES:
            types[column] = "uint8"
        else:
            largest = max(label_sizes[column] - 1, -IGNORE)
            types[column] = "int8" if largest <= 127 else "int16" if largest <= 32767 else "int32"
    return types


def derived_types(ids: np.ndarray, offsets: np.ndarray, sep_id: int) -> np.ndarray:
    """Segment ids of flattened rows: the number of [SEP] strictly before each token in its row, mod 2."""
    is_sep = (ids == sep_id).view(np.uint8)
    # only the parity matters: a running XOR of the [SEP] flags in one byte a token (a shard's
    # ids are millions of tokens; int64 counts took 8 bytes a token for each temporary)
    before = np.bitwise_xor.accumulate(is_sep) ^ is_sep if len(is_sep) else is_sep
    starts = np.repeat(np.append(before, np.uint8(0))[offsets[:-1]], np.diff(offsets))  # an empty last row: index len(ids)
    return before ^ starts


# --- writing one shard --------------------------------------------------------------------------

#: the ``array`` type code of each stored type (a row buffer holds values as they will be stored)
TYPE_CODES = {"uint8": "B", "int8": "b", "int16": "h", "uint16": "H", "int32": "i", "int64": "q"}


class RowColumn:
    """One column of a shard being built: its rows' values end to end and their lengths, as
    machine integers (``append`` takes a row, as a list does) of the given ``array`` type code."""

    __slots__ = ("values", "lengths")

    def __init__(self, typecode: str = "q") -> None:
        self.values, self.lengths = array.array(typecode), array.array("q")

    def append(self, row: Sequence[int]) -> None:
        if type(row) is list:  # what the tasks give: fromlist converts a third faster than extend
            self.values.fromlist(row)
        else:
            self.values.extend(row)
        self.lengths.append(len(row))

    def __len__(self) -> int:
        return len(self.lengths)


def _rows_flat(values) -> tuple[np.ndarray, np.ndarray]:
    """(every value end to end, int32 row offsets) of a RowColumn (in its own machine type, no
    copy) or a list of rows (as int64)."""
    if isinstance(values, RowColumn):
        lengths = np.frombuffer(values.lengths, dtype=np.int64) if len(values) else np.zeros(0, np.int64)
        flat = (np.frombuffer(values.values, dtype=values.values.typecode) if len(values.values)
                else np.zeros(0, np.int64))
    else:
        lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
        flat = np.fromiter((x for v in values for x in v), dtype=np.int64, count=int(lengths.sum()))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return flat, offsets


def write_shard(folder: Path, index: int, rows: dict[str, Any], types: dict[str, str],
                sep_id: int, point: str = "") -> dict[str, Any]:
    """Write one shard's examples (per column a list of rows or a RowColumn) atomically and mark
    it done; returns its marker."""
    import pyarrow as pa

    arrays, names = [], []
    flat_ids = offsets = None
    for column, values in rows.items():
        flat, offsets_col = _rows_flat(values)
        if column == "input_ids":
            flat_ids, offsets = flat, offsets_col
        if column == TYPES:
            if flat_ids is not None and np.array_equal(derived_types(flat_ids, offsets, sep_id), flat):
                continue  # follows from the [SEP] positions: not stored
        limits = np.iinfo(types[column])
        if flat.size and (flat.min() < limits.min or flat.max() > limits.max):
            raise DataBuildError(f"column '{column}' holds values outside {types[column]} "
                                 f"({flat.min()}..{flat.max()}); the task's num_labels or the vocabulary size is wrong")
        stored = flat if flat.dtype == np.dtype(types[column]) else flat.astype(types[column])
        arrays.append(pa.ListArray.from_arrays(pa.array(offsets_col), pa.array(stored)))
        names.append(column)
    table = pa.Table.from_arrays(arrays, names=names)
    path = folder / f"shard-{index:05d}.arrow"
    tmp = folder / f".shard-{index:05d}.arrow.tmp"
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    fsync_file(tmp)
    os.replace(tmp, path)
    marker = {"rows": table.num_rows, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
    write_json_durably(folder / f"shard-{index:05d}.done", marker)
    faults.inject(f"{point}:{index}")  # tests kill a build here, between two finished shards
    return marker


# --- which shards are done ----------------------------------------------------------------------

def finished_shards(folder: Path, count: int, verify_hash: bool) -> dict[int, dict[str, Any]]:
    """Markers of the shards whose file agrees with the marker (size; and SHA-256 if asked)."""
    done = {}
    for index in range(count):
        marker_path = folder / f"shard-{index:05d}.done"
        path = folder / f"shard-{index:05d}.arrow"
        try:
            marker = json.loads(marker_path.read_text(encoding="utf-8"))
            ok = path.stat().st_size == marker["bytes"] and (not verify_hash or file_sha256(path) == marker["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if ok:
            done[index] = marker
        elif marker_path.exists() or path.exists():
            logger.warning("example shard %s is damaged or incomplete; building it again", path)
            for stale in (marker_path, path):
                stale.unlink(missing_ok=True)
    return done


def pending_shards(folder: Path, shard_count: int, describe: str) -> tuple["ExampleSet | None", dict[int, Any], list[int]]:
    """Where a set stands: (the finished set, {}, []) when it is complete and sound, else (None,
    markers of its finished shards, indices of the shards still to build). Damaged shards of a
    finished set and of an interrupted build count as missing (with a warning)."""
    manifest_path = folder / MANIFEST
    if manifest_path.is_file():
        example_set = ExampleSet.open(folder)
        damaged = example_set.damaged_shards()
        if not damaged:
            return example_set, {}, []
        logger.warning("%s: %d damaged example shard(s) will be built again", describe, len(damaged))
        for index in damaged:
            (folder / f"shard-{index:05d}.done").unlink(missing_ok=True)
        manifest_path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    done = finished_shards(folder, shard_count, verify_hash=True)
    if done:
        logger.warning("%s: reusing %d of %d finished example shard(s) of an interrupted build",
                       describe, len(done), shard_count)
    return None, done, [i for i in range(shard_count) if i not in done]


def finish_set(folder: Path, shard_count: int, done: dict[int, Any], columns: dict[str, str], sep_id: int,
               empty_message: str) -> "ExampleSet":
    """Write the manifest of a set whose every shard is built (``done``: index -> marker)."""
    shards = [{"file": f"shard-{i:05d}.arrow", **done[i]} for i in range(shard_count)]
    total = sum(s["rows"] for s in shards)
    if total == 0:
        raise CorpusError(empty_message)
    for stray in folder.glob(".*.tmp"):  # what a killed build was writing when it stopped
        stray.unlink(missing_ok=True)
    write_json_durably(folder / MANIFEST, {"format": FORMAT, "columns": columns, "sep_id": sep_id, "rows": total,
                                           "shards": shards})
    return ExampleSet.open(folder)


def write_set(folder: Path, columns: dict[str, list[list[int]]], sep_id: int,
              types: dict[str, str] | None = None) -> "ExampleSet":
    """A one-shard set from columns held in memory (small sets, tests); ``types`` default to int32
    (``uint8`` for segment ids)."""
    types = types or {c: "uint8" if c == TYPES else "int32" for c in columns}
    folder.mkdir(parents=True, exist_ok=True)
    marker = write_shard(folder, 0, columns, types, sep_id)
    write_json_durably(folder / MANIFEST, {"format": FORMAT, "columns": types, "sep_id": sep_id, "rows": marker["rows"],
                                    "shards": [{"file": "shard-00000.arrow", **marker}]})
    return ExampleSet.open(folder)


# --- reading ------------------------------------------------------------------------------------

class ExampleSet:
    """A task's examples for one split: the shard files memory-mapped, read as one sequence.

    ``len(s)``, ``s[i]`` (one example as lists of ints), ``s[[i, j, ...]]`` and ``s.rows(...)``
    (columns of numpy rows, for batching), ``s.lengths()`` (every example's length),
    ``s.column_names``, ``s.content_hash()`` (independent of how the set is sharded).
    Nothing is concatenated: a row is found by a binary search over the shards' row offsets."""

    def __init__(self, folder: Path, manifest: dict[str, Any], sep_id: int):
        self.folder = folder
        self.manifest = manifest
        self.sep_id = sep_id
        self.column_names = list(manifest["columns"])
        self.num_bytes = sum(s["bytes"] for s in manifest["shards"])
        self._starts = np.cumsum([0] + [s["rows"] for s in manifest["shards"]])
        self._tables: dict[int, Any] = {}

    @classmethod
    def open(cls, folder: Path) -> "ExampleSet":
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        return cls(folder, manifest, int(manifest["sep_id"]))

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _table(self, shard: int):
        import pyarrow as pa

        if shard not in self._tables:
            source = pa.memory_map(str(self.folder / self.manifest["shards"][shard]["file"]), "r")
            self._tables[shard] = pa.ipc.open_file(source).read_all()
        return self._tables[shard]

    def damaged_shards(self) -> list[int]:
        """Shards whose file is missing, has another size than recorded, or is no readable Arrow file."""
        bad = []
        for index, shard in enumerate(self.manifest["shards"]):
            path = self.folder / shard["file"]
            try:
                ok = path.stat().st_size == shard["bytes"] and self._table(index).num_rows == shard["rows"]
            except (OSError, ValueError):  # pyarrow's ArrowInvalid (a torn file) is a ValueError
                ok = False
            if not ok:
                self._tables.pop(index, None)
                bad.append(index)
        return bad

    def rows(self, indices: Sequence[int]) -> dict[str, list[np.ndarray]]:
        """The examples at ``indices`` (in that order) as ``{column: [numpy row, ...]}``."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"example index out of range 0..{len(self) - 1}")
        shards = np.searchsorted(self._starts, indices, side="right") - 1
        out: dict[str, list[Any]] = {c: [None] * len(indices) for c in self.column_names}
        for shard in np.unique(shards):
            where = np.nonzero(shards == shard)[0]
            taken = self._table(int(shard)).take(indices[where] - self._starts[shard])
            flat = {name: _flat(taken.column(name)) for name in taken.column_names}
            if TYPES not in flat:
                ids, offsets = flat["input_ids"]
                flat[TYPES] = (derived_types(ids, offsets, self.sep_id), offsets)
            for column in self.column_names:
                values, offsets = flat[column]
                for k, position in enumerate(where):
                    out[column][position] = values[offsets[k]: offsets[k + 1]]
        return out

    def __getitem__(self, key):
        if isinstance(key, str):  # a whole column, as lists (label statistics)
            return [row for start in range(0, len(self), 4096)
                    for row in self[list(range(start, min(start + 4096, len(self))))][key]]
        if isinstance(key, (int, np.integer)):
            index = int(key) + (len(self) if key < 0 else 0)
            return {c: v[0].tolist() for c, v in self.rows([index]).items()}
        return {c: [row.tolist() for row in v] for c, v in self.rows(list(key)).items()}

    def lengths(self) -> np.ndarray:
        """Every example's length, from the Arrow offsets (no row is read)."""
        parts = [np.diff(_flat(self._table(i).column("input_ids"))[1]) for i in range(len(self.manifest["shards"]))]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def content_hash(self) -> str:
        """SHA-256 over every example's columns as int64, in order: equal for equal examples
        whatever the shard layout or stored types."""
        digest = hashlib.sha256()
        for start in range(0, len(self), 4096):
            block = self.rows(range(start, min(start + 4096, len(self))))
            for column in self.column_names:
                for row in block[column]:
                    digest.update(np.asarray(row, dtype=np.int64).tobytes() + b"|")
                digest.update(column.encode())
        return digest.hexdigest()


def _flat(chunked) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list column, values rebased to start at offset 0."""
    array = chunked.combine_chunks()
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy(zero_copy_only=False)
    return values[offsets[0]: offsets[-1]], offsets - offsets[0]
