"""The document store: parsed documents in Arrow shard files, decoded only when read.

A corpus is never a list of Python objects: documents are written one at a time by
``StoreWriter`` into shards of about ``shard_chars`` characters of text (nested columns: sections
-> paragraphs -> sentences with entity and phrase spans), and read back through ``DocumentView``,
a sequence that decodes a document (or a run of them, shard by shard) when asked. Beside the
shards, three small per-document arrays (8-byte id hash, characters, sentences) let the held-out
split, shard bounds and statistics be computed without decoding anything::

    CACHE/corpus/<key>/
      docs-00000.arrow ...   the shards, memory-mapped when read
      documents.npz          id hash (uint64), characters, sentences of every document, in order
      store.json             the shards with their document counts
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from ernie_cl.corpus.document import Document, Section, Sentence

STORE_FILE = "store.json"
ARRAYS_FILE = "documents.npz"
SHARD_CHARS = 8_000_000  # about 8 MB of text a shard: what one worker holds at a time
READ_BATCH = 256  # documents decoded together when iterating
OPEN_SHARDS = 4  # shards kept memory-mapped per process (see DocumentStore.table)
COUNTS = ("documents", "sections", "paragraphs", "sentences", "characters", "entities", "phrases")


def id_hash(doc_id: str) -> int:
    """The first 8 bytes of sha256(id), big-endian: the held-out split reads it as a fraction."""
    return int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big")


def _schema():
    import pyarrow as pa

    span = pa.list_(pa.int32())
    sentence = pa.struct([("text", pa.string()), ("entities", pa.list_(span)), ("phrases", pa.list_(span))])
    section = pa.struct([("heading", pa.string()), ("paragraphs", pa.list_(pa.list_(sentence)))])
    return pa.schema([("id", pa.string()), ("title", pa.string()), ("sections", pa.list_(section))])


def write_shard(folder: Path, index: int, documents: list[Document]) -> dict[str, Any]:
    """Write one shard file (any process may write its own); returns what the store's manifest and
    arrays need of it: file name, document count, per-document arrays, counts."""
    import pyarrow as pa

    name = f"docs-{index:05d}.arrow"
    table = pa.Table.from_pylist([d.to_dict() for d in documents], schema=_schema())
    with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    counts = dict.fromkeys(COUNTS, 0)
    chars, sentences = [], []
    for document in documents:
        counts["sections"] += len(document.sections)
        for paragraph in document.paragraphs():
            counts["paragraphs"] += 1
            counts["sentences"] += len(paragraph)
            counts["entities"] += sum(len(s.entities) for s in paragraph)
            counts["phrases"] += sum(len(s.phrases) for s in paragraph)
        chars.append(sum(len(s.text) for s in document.sentences()))
        sentences.append(document.num_sentences())
    counts["documents"], counts["characters"] = len(documents), sum(chars)
    return {"file": name, "documents": len(documents), "hashes": [id_hash(d.id) for d in documents],
            "chars": chars, "sentences": sentences, "counts": counts}


def finish_store(folder: Path, shards: list[dict[str, Any]]) -> dict[str, int]:
    """Write the per-document arrays and the shard list of shards written by ``write_shard`` (in
    reading order); returns the store's counts."""
    join = lambda key, dtype: np.array([x for s in shards for x in s[key]], dtype=dtype)  # noqa: E731
    np.savez(folder / ARRAYS_FILE, hashes=join("hashes", np.uint64), chars=join("chars", np.int64),
             sentences=join("sentences", np.int64))
    (folder / STORE_FILE).write_text(json.dumps({"shards": [{"file": s["file"], "documents": s["documents"]}
                                                            for s in shards]}), encoding="utf-8")
    return {key: sum(s["counts"][key] for s in shards) for key in COUNTS}


def _values(array) -> tuple[Any, list[int]]:
    """(values, offsets into them) of a list array that may be a slice: ``flatten()`` gives the
    slice's own values, and its offsets are shifted to start at 0."""
    offsets = array.offsets.to_numpy()
    return array.flatten(), (offsets - offsets[0]).tolist()


def _runs(items: list, offsets: list[int]) -> list[list]:
    return [items[a:b] for a, b in zip(offsets, offsets[1:])]


def _spans(column) -> list[list[tuple[int, int]]]:
    """Per sentence, its spans as (start, end) tuples (a list<list<int32>> column of pairs)."""
    pairs, offsets = _values(column)
    flat = pairs.flatten().to_numpy()
    return _runs(list(zip(flat[0::2].tolist(), flat[1::2].tolist())), offsets)


def decode_rows(table) -> list[Document]:
    """The documents of some rows of a shard table, built column by column: equal to
    ``Document.from_dict`` of every row of ``table.to_pylist()``, several times faster (no dict per
    sentence; the conversions run in Arrow). ``StructArray.flatten`` is used rather than ``field``
    because only it applies a slice's offset."""
    sections, section_offsets = _values(table.column("sections").combine_chunks())
    headings, paragraphs = sections.flatten()
    paragraphs, paragraph_offsets = _values(paragraphs)
    sentences, sentence_offsets = _values(paragraphs)
    texts, entities, phrases = sentences.flatten()
    built = [Sentence(*fields) for fields in zip(texts.to_pylist(), _spans(entities), _spans(phrases), strict=True)]
    section_list = [Section(heading, runs) for heading, runs in zip(
        headings.to_pylist(), _runs(_runs(built, sentence_offsets), paragraph_offsets), strict=True)]
    return [Document(doc_id, title, own) for doc_id, title, own in zip(
        table.column("id").to_pylist(), table.column("title").to_pylist(), _runs(section_list, section_offsets),
        strict=True)]


class StoreWriter:
    """Append documents one at a time; a shard is written whenever the buffered text reaches
    ``shard_chars``."""

    def __init__(self, folder: Path, shard_chars: int = SHARD_CHARS):
        self.folder = folder
        self.shard_chars = shard_chars
        folder.mkdir(parents=True, exist_ok=True)
        self._documents: list[Document] = []
        self._buffered = 0
        self._written = 0
        self.shards: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}

    def add(self, document: Document) -> None:
        self._documents.append(document)
        self._written += 1
        self._buffered += sum(len(s.text) for s in document.sentences())
        if self._buffered >= self.shard_chars:
            self._flush()

    def __len__(self) -> int:
        return self._written

    def _flush(self) -> None:
        if self._documents:
            self.shards.append(write_shard(self.folder, len(self.shards), self._documents))
        self._documents, self._buffered = [], 0

    def close(self) -> None:
        """Write the last shard, the per-document arrays and the shard list."""
        self._flush()
        self.counts = finish_store(self.folder, self.shards)


class DocumentStore:
    """The shards of one store, opened memory-mapped on first use."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.shards = json.loads((folder / STORE_FILE).read_text(encoding="utf-8"))["shards"]
        with np.load(folder / ARRAYS_FILE) as arrays:
            self.hashes, self.chars, self.sentences = arrays["hashes"], arrays["chars"], arrays["sentences"]
        self.starts = np.cumsum([0] + [s["documents"] for s in self.shards])
        self._tables: dict[int, Any] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __reduce__(self):
        """Pickled as its folder (for Ray workers): the other side reads the small files again and
        maps the shards on first use; the memory-mapped tables never travel."""
        return DocumentStore, (self.folder,)

    def table(self, shard: int):
        """Shard ``shard`` as an Arrow table over its memory-mapped file. Only the last
        ``OPEN_SHARDS`` stay mapped: a pass over the whole corpus would otherwise keep every page
        it touched resident in this process, and in every worker forked from it (RSS growing with
        the corpus; 70 MB a process at 50 MB of text)."""
        import pyarrow as pa

        if shard in self._tables:
            self._tables[shard] = self._tables.pop(shard)  # most recently used last
        else:
            while len(self._tables) >= OPEN_SHARDS:
                del self._tables[next(iter(self._tables))]  # unmapped once its rows are decoded
            source = pa.memory_map(str(self.folder / self.shards[shard]["file"]), "r")
            self._tables[shard] = pa.ipc.open_file(source).read_all()
        return self._tables[shard]

    def decode(self, start: int, end: int) -> list[Document]:
        """Documents ``start`` .. ``end - 1`` (store order), decoded."""
        out: list[Document] = []
        while start < end:
            shard = int(np.searchsorted(self.starts, start, side="right") - 1)
            stop = min(end, int(self.starts[shard + 1]))
            out.extend(decode_rows(self.table(shard).slice(start - int(self.starts[shard]), stop - start)))
            start = stop
        return out

    def sentence_texts(self, start: int, end: int) -> tuple[list[str], np.ndarray]:
        """The sentence texts of documents ``start`` .. ``end - 1`` (in order) and where each
        document's begin, read from the text column alone (no document decoded): a pass that needs
        only text, such as training the tokenizer, is several times cheaper than ``decode``."""
        texts: list[str] = []
        firsts = [0]
        while start < end:
            shard = int(np.searchsorted(self.starts, start, side="right") - 1)
            stop = min(end, int(self.starts[shard + 1]))
            sections, section_offsets = _values(self.table(shard).slice(start - int(self.starts[shard]), stop - start)
                                                .column("sections").combine_chunks())
            paragraphs, paragraph_offsets = _values(sections.flatten()[1])
            sentences, sentence_offsets = _values(paragraphs)
            texts.extend(sentences.flatten()[0].to_pylist())
            # a document's first sentence: through its first section's first paragraph
            ends = np.asarray(sentence_offsets)[np.asarray(paragraph_offsets)[np.asarray(section_offsets)]]
            firsts.extend((firsts[-1] + ends[1:]).tolist())
            start = stop
        return texts, np.asarray(firsts, dtype=np.int64)

    def view(self, indices: Union[np.ndarray, None] = None) -> "DocumentView":
        return DocumentView(self, np.arange(len(self), dtype=np.int64) if indices is None else np.asarray(indices, np.int64))


class DocumentView(Sequence):
    """Some documents of a store, in store order: a read-only sequence that decodes on access.
    Equal to a list (or view) with the same documents."""

    def __init__(self, store: DocumentStore, indices: np.ndarray):
        self.store = store
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __reduce__(self):
        return DocumentView, (self.store, self.indices)  # the store pickles as its folder

    def __getitem__(self, key):
        if isinstance(key, slice):
            return DocumentView(self.store, self.indices[key])
        index = int(self.indices[key])
        return self.store.decode(index, index + 1)[0]

    def __iter__(self) -> Iterator[Document]:
        for start in range(0, len(self.indices), READ_BATCH):
            chunk = self.indices[start : start + READ_BATCH]
            if not len(chunk):
                continue
            first, span = int(chunk[0]), int(chunk[-1] - chunk[0]) + 1
            if span <= 2 * len(chunk):  # mostly a run (a split's view skips a few held-out documents): one read
                run = self.store.decode(first, first + span)
                yield from (run[i] for i in (chunk - first).tolist())
            else:
                for index in chunk:
                    yield self.store.decode(int(index), int(index) + 1)[0]

    def sentence_batches(self) -> Iterator[list[str]]:
        """The view's sentence texts, in order, a list per ``READ_BATCH`` documents (read as
        ``DocumentStore.sentence_texts``, without decoding documents)."""
        for start in range(0, len(self.indices), READ_BATCH):
            chunk = self.indices[start : start + READ_BATCH]
            if not len(chunk):
                continue
            first, span = int(chunk[0]), int(chunk[-1] - chunk[0]) + 1
            texts, firsts = self.store.sentence_texts(first, first + span)
            local = chunk - first
            yield [t for a, b in zip(firsts[local].tolist(), firsts[local + 1].tolist()) for t in texts[a:b]]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DocumentView) and other.store is self.store:
            return bool(np.array_equal(self.indices, other.indices))
        if isinstance(other, (list, tuple, DocumentView)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"DocumentView({len(self)} documents of {self.store.folder})"

    def char_counts(self) -> np.ndarray:
        """Characters of text of every document, read from the store's arrays (nothing decoded)."""
        return self.store.chars[self.indices]
