"""``load_corpus``: pick a reader, parse once into the document store, split off held-out.

Parsing (reader -> sentences -> phrase/NER spans) happens only on a cache miss; the cache key
covers the source files' bytes and every option that changes the documents. It streams: each
document goes to the store (``store.py``, Arrow shards) as soon as it is parsed, and phrase counts
are gathered on the way; when phrases (or spaCy entities) are wanted, a second pass over the
shards adds the spans. No step holds the corpus in memory. The train/held-out split is a pure
function of document ids and ``eval_fraction``, recomputed after every load from the ids' hashes,
so it needs no cache of its own and never changes when the corpus is re-parsed.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ernie_cl.corpus import cache, phrases as span_sources, readers, wiki
from ernie_cl.corpus.document import Document
from ernie_cl.corpus.store import DocumentStore, DocumentView, StoreWriter, finish_store, id_hash, write_shard
from ernie_cl.corpus.workers import SHARED, ordered_map
from ernie_cl.corpus.sentences import MAX_SENTENCE_CHARS, RawDocument, build_document
from ernie_cl.errors import CorpusError

SOURCES = ("bundled", "wiki", "txt", "jsonl", "hf", "lines")
logger = logging.getLogger(__name__)


@dataclass
class Corpus:
    documents: DocumentView = field(repr=False)  # every document, reading order (decoded on access)
    train: DocumentView = field(repr=False)
    heldout: DocumentView = field(repr=False)
    fingerprint: str  # hex; covers source bytes, parse options and eval_fraction
    stats: dict[str, int] = field(default_factory=dict)
    from_cache: bool = False
    cache_path: Path | None = None  # the store folder these documents live in


def heldout_mask(hashes: np.ndarray, eval_fraction: float) -> np.ndarray:
    """True for the held-out documents: ``sha256(id)`` read as a fraction is below eval_fraction.

    Both sides are non-empty from 2 documents: if the hash sends no document to held-out, the one
    with the smallest key goes there; if it sends every document, the one with the largest key
    stays in train."""
    keys = hashes.astype(np.float64) / 2.0**64
    mask = keys < eval_fraction
    if len(keys) >= 2:
        if not mask.any():
            mask[np.argmin(keys)] = True
        elif mask.all():
            mask[np.argmax(keys)] = False
    return mask


def split_heldout(documents: list[Document],
                  eval_fraction: float) -> tuple[list[Document], list[Document]]:
    """(train, heldout) of a list of documents by ``heldout_mask``; reading order is kept."""
    mask = heldout_mask(np.array([id_hash(d.id) for d in documents], dtype=np.uint64), eval_fraction)
    return [d for d, h in zip(documents, mask) if not h], [d for d, h in zip(documents, mask) if h]


def _existing(path: str | Path | None, source: str, kind: str) -> Path:
    if path is None:
        raise CorpusError(f"corpus source '{source}' needs a path to a {kind}; pass path=...")
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise CorpusError(f"corpus path '{path}' does not exist; pass an existing {kind} "
                          f"for source '{source}'")
    want_dir = kind.endswith("folder")
    if resolved.is_dir() != want_dir:
        raise CorpusError(f"corpus path '{path}' is not a {kind}; source '{source}' reads a {kind}")
    return resolved


def _open_source(source: str, path: str | Path | None, split: str, text_field: str,
                 title_field: str) -> tuple[str, Any]:
    """(content hash, reader(stats) -> RawDocuments) for one source; validates the path first.
    Hashing reads every source file, so an unreadable one is reported here, before any parsing."""
    try:
        return _open_readable_source(source, path, split, text_field, title_field)
    except OSError as err:  # permission denied, an I/O error, a folder where a file should be
        raise readers.unreadable(Path(err.filename or str(path)), err) from None


def _open_readable_source(source: str, path: str | Path | None, split: str, text_field: str,
                          title_field: str) -> tuple[str, Any]:
    if source == "bundled":
        if path is not None:
            raise CorpusError(f"source 'bundled' takes no path (got '{path}'); drop the path, or pick "
                              f"the source that reads it: wiki, txt, jsonl, hf or lines")
        wiki_path, lee_path = readers.bundled_paths()

        def read_bundled(stats: Counter) -> Iterator[RawDocument]:
            yield from wiki.read_wiki_dump(wiki_path, stats)
            yield from readers.read_lines_file(lee_path, stats)

        return cache.hash_files([wiki_path, lee_path]), read_bundled
    if source == "wiki":
        dump = _existing(path, source, "MediaWiki .xml or .xml.bz2 file")
        return cache.hash_files([dump]), lambda stats: wiki.read_wiki_dump(dump, stats)
    if source == "lines":
        lines = _existing(path, source, "text file with one document per line")
        return cache.hash_files([lines]), lambda stats: readers.read_lines_file(lines, stats)
    if source == "txt":
        folder = _existing(path, source, ".txt folder")
        files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
        return cache.hash_files(files, root=folder), lambda stats: readers.read_txt_folder(folder, stats)
    if source == "jsonl":
        jsonl = _existing(path, source, "JSONL file")
        return cache.hash_files([jsonl]), lambda stats: readers.read_jsonl(
            jsonl, stats, text_field, title_field)
    if source == "hf":
        if path is None:
            raise CorpusError("corpus source 'hf' needs a path: a save_to_disk folder or a dataset name")
        local = Path(path).expanduser()
        if not local.exists() and (local.is_absolute() or str(path).startswith((".", "~"))):
            raise CorpusError(f"corpus path '{path}' does not exist; pass a folder written by "
                              f"Dataset.save_to_disk, or a Hugging Face dataset name")
        dataset = readers.load_hf(str(path), split)
        if local.exists():
            files = sorted(p for p in local.rglob("*") if p.is_file())
            content = cache.hash_files(files, root=local)
        else:  # a hub dataset: datasets' own fingerprint follows its cached files
            content = cache.hash_values(name=str(path), fingerprint=dataset._fingerprint)
        return content, lambda stats: readers.read_hf(dataset, str(path), stats, text_field, title_field)
    raise CorpusError(f"unknown corpus source '{source}'; use one of: {', '.join(SOURCES)}")


def _check_options(eval_fraction: float, max_documents: int | None, phrase_min_count: int,
                   phrase_threshold: float) -> None:
    if not 0.0 <= eval_fraction < 1.0:
        raise CorpusError(f"eval_fraction={eval_fraction} is out of range; use a value in [0, 1), e.g. 0.05")
    if max_documents is not None and max_documents < 1:
        raise CorpusError(f"max_documents={max_documents} must be at least 1, or None for all documents")
    if phrase_min_count < 1 or phrase_threshold <= 0:
        raise CorpusError(f"phrase_min_count={phrase_min_count} must be >= 1 and phrase_threshold="
                          f"{phrase_threshold} > 0; gensim Phrases needs both")


PARSE_BATCH_CHARS = 2_000_000  # raw text a worker parses at a time (one shard of the first pass)


def _ingest(read: Any, stats: Counter, target: Path, *, max_documents: int | None, use_phrases: bool,
            phrase_min_count: int, phrase_threshold: float, spacy_model: str | None,
            show_progress: bool, workers: int = 1) -> dict[str, int]:
    """Parse the source into a store at ``target`` (a fresh folder); returns the document counts.

    The reader runs here; batches of its raw documents (about ``PARSE_BATCH_CHARS`` of text) are
    split into sentences by ``workers`` processes, each writing its batch as one shard and sending
    back the shard's arrays and phrase counts, which are merged here in reading order. A second pass
    (in the workers too) adds the phrase and spaCy spans shard by shard. The batches depend on the
    source alone, so the store is the same whatever the number of workers. With ``max_documents``
    the documents are parsed one at a time here (the count decides where to stop)."""
    from ernie_cl.progress import progress_bar

    nlp = span_sources.load_spacy(spacy_model) if spacy_model else None  # fail before the long parse
    two_passes = use_phrases or nlp is not None
    first_folder = target / "pass1" if two_passes else target
    first_folder.mkdir(parents=True, exist_ok=True)
    counter = span_sources.PhraseCounter(phrase_min_count, phrase_threshold) if use_phrases else None
    with closing(read(stats)) as stream, progress_bar(desc="parsing corpus", unit=" docs",
                                               disable=not show_progress) as bar:
        if max_documents is not None:
            shards = _parse_one_by_one(stream, stats, first_folder, max_documents, counter, bar)
        else:
            shards = []
            for shard, batch_stats, counts in ordered_map(_parse_batch, _raw_batches(stream, bar), workers,
                                                          folder=first_folder, phrases=use_phrases,
                                                          phrase_options=(phrase_min_count, phrase_threshold)):
                shards.append(shard)
                stats.update(batch_stats)
                if counter is not None:
                    counter.merge(*counts)
    counts = finish_store(first_folder, shards)
    if not two_passes:
        return counts
    with progress_bar(total=len(shards), desc="adding phrase spans", unit=" shards", disable=not show_progress) as bar:
        final = []
        for shard, entities in ordered_map(_annotate_shard, range(len(shards)), 1 if nlp is not None else workers,
                                           source=DocumentStore(first_folder), folder=target, nlp=nlp,
                                           frozen=counter.frozen() if counter is not None else None):
            final.append(shard)
            if nlp is not None:
                stats["spacy_entities"] += entities
            bar.update(1)
    shutil.rmtree(first_folder)
    return finish_store(target, final)


def _raw_batches(stream: Iterator[RawDocument], bar: Any) -> Iterator[tuple[int, list[RawDocument]]]:
    """(index, raw documents) of about PARSE_BATCH_CHARS of text each; refuses a duplicate id."""
    seen: set[int] = set()  # 8-byte id hashes: a duplicate id is found without keeping every id
    batch: list[RawDocument] = []
    size = index = 0
    for raw in stream:
        _check_unique(raw, seen)
        batch.append(raw)
        size += sum(len(section.text) for section in raw.sections)
        bar.update(1)
        if size >= PARSE_BATCH_CHARS:
            yield index, batch
            batch, size, index = [], 0, index + 1
    if batch:
        yield index, batch


def _check_unique(raw: RawDocument, seen: set[int]) -> None:
    key = id_hash(raw.id)
    if key in seen:
        raise CorpusError(f"duplicate document id '{raw.id}' in the corpus; ids must be unique")
    seen.add(key)


def _kept(raw: RawDocument, stats: Counter) -> Document | None:
    document = build_document(raw, stats=stats)
    if document.num_sentences() == 0:
        stats["empty_documents_dropped"] += 1
        return None
    return document


def _parse_batch(item: tuple[int, list[RawDocument]]) -> tuple[dict[str, Any], Counter, Any]:
    """In a worker: sentences of one batch, written as shard ``index``; its arrays, counters and
    phrase counts go back."""
    index, raws = item
    stats: Counter = Counter()
    documents = [d for d in (_kept(raw, stats) for raw in raws) if d is not None]
    counts = None
    if SHARED["phrases"]:
        counter = span_sources.PhraseCounter(*SHARED["phrase_options"])
        for document in documents:
            counter.add(document)
        counts = counter.counts()
    return write_shard(SHARED["folder"], index, documents), stats, counts


def _annotate_shard(index: int) -> tuple[dict[str, Any], int]:
    """In a worker: first-pass shard ``index`` with its phrase (and spaCy entity) spans, written again."""
    source: DocumentStore = SHARED["source"]
    documents = source.decode(int(source.starts[index]), int(source.starts[index + 1]))
    entities = span_sources.add_spacy_entities(documents, SHARED["nlp"]) if SHARED["nlp"] is not None else 0
    if SHARED["frozen"] is not None:
        for document in documents:
            span_sources.annotate_phrases(document, SHARED["frozen"])
    return write_shard(SHARED["folder"], index, documents), entities


def _parse_one_by_one(stream: Iterator[RawDocument], stats: Counter, folder: Path, max_documents: int,
                      counter: Any, bar: Any) -> list[dict[str, Any]]:
    seen: set[int] = set()
    writer = StoreWriter(folder)
    for raw in stream:
        _check_unique(raw, seen)
        bar.update(1)
        document = _kept(raw, stats)
        if document is None:
            continue
        writer.add(document)
        if counter is not None:
            counter.add(document)
        if len(writer) >= max_documents:
            break
    writer.close()
    return writer.shards


def _report_repairs(where: str, stats: dict[str, int]) -> None:
    """One log line with what the corpus needed repaired or skipped (the counts are also in stats)."""
    parts = []
    if stats["invalid_utf8_replaced"]:
        parts.append(f"{stats['invalid_utf8_replaced']} invalid UTF-8 sequence(s) replaced by U+FFFD in "
                     f"{stats.get('invalid_utf8_documents', 0)} document(s)")
    if stats["empty_documents_dropped"]:
        parts.append(f"{stats['empty_documents_dropped']} empty document(s) skipped")
    if stats["long_sentences_cut"]:
        parts.append(f"{stats['long_sentences_cut']} sentence(s) longer than {MAX_SENTENCE_CHARS} characters "
                     "cut at spaces")
    if parts:
        logger.warning("corpus %s: %s", where, "; ".join(parts))


def load_corpus(source: str = "bundled", path: str | Path | None = None, *, cache_dir: str | Path,
                max_documents: int | None = None, eval_fraction: float = 0.05, phrases: bool = True,
                phrase_min_count: int = 5, phrase_threshold: float = 10.0, spacy_model: str | None = None,
                text_field: str = "text", title_field: str = "title", split: str = "train",
                show_progress: bool = True, workers: int = 1) -> Corpus:
    """Load (parse once, then from the Arrow cache) a corpus and split off held-out documents."""
    _check_options(eval_fraction, max_documents, phrase_min_count, phrase_threshold)
    content, read = _open_source(source, path, split, text_field, title_field)
    parse_options = dict(
        format=cache.CACHE_FORMAT, code=cache.code_version(), source=source, content=content,
        max_documents=max_documents,
        phrases=phrases, phrase_min_count=phrase_min_count if phrases else None,
        phrase_threshold=phrase_threshold if phrases else None, spacy_model=spacy_model,
        text_field=text_field, title_field=title_field, split=split if source == "hf" else None,
    )
    key = cache.hash_values(**parse_options)
    target = Path(cache_dir).expanduser() / "corpus" / key
    cached = _open_cache(target)
    from_cache = cached is not None
    if cached is None:
        stats: Counter = Counter()
        staging = _staging_folder(target)
        try:
            counts = _ingest(read, stats, staging, max_documents=max_documents, use_phrases=phrases,
                             phrase_min_count=phrase_min_count, phrase_threshold=phrase_threshold,
                             spacy_model=spacy_model, show_progress=show_progress, workers=workers)
            if not counts["documents"]:
                where = f"'{path}'" if path is not None else f"source '{source}'"
                hint = f" (or check text_field='{text_field}')" if source in ("jsonl", "hf") else ""
                raise CorpusError(f"corpus {where} is empty: no document has any text; add documents "
                                  f"with text{hint}")
            meta = {"reader": dict(stats), "counts": counts}
            (staging / cache.META_FILE).write_text(json.dumps(meta, sort_keys=True), encoding="utf-8")
            _move_into_place(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        cached = meta, DocumentStore(target)
    meta, store = cached
    mask = heldout_mask(store.hashes, eval_fraction)
    documents = store.view()
    train, heldout = store.view(np.nonzero(~mask)[0]), store.view(np.nonzero(mask)[0])
    base = {"redirects_dropped": 0, "invalid_utf8_replaced": 0, "empty_documents_dropped": 0, "long_sentences_cut": 0}
    stats_out = {**base, **dict(sorted(meta["reader"].items())), **meta["counts"],
                 "train_documents": len(train), "heldout_documents": len(heldout)}
    _report_repairs(f"'{path}'" if path is not None else f"source '{source}'", stats_out)
    return Corpus(
        documents=documents, train=train, heldout=heldout,
        fingerprint=cache.hash_values(parse=key, eval_fraction=eval_fraction),
        stats=stats_out, from_cache=from_cache, cache_path=target,
    )


def _open_cache(target: Path) -> tuple[dict[str, Any], DocumentStore] | None:
    """The finished store and its counters (written last: the completion marker), or None when
    there is none or it is unreadable."""
    try:
        meta = json.loads((target / cache.META_FILE).read_text(encoding="utf-8"))
        store = DocumentStore(target)  # the shard list and arrays must be readable too
        return (meta, store) if {"reader", "counts"} <= set(meta) else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as err:  # damaged cache: rebuild rather than fail
        logger.warning("ignoring unreadable corpus cache %s (%s)", target, err)
        return None


def _staging_folder(target: Path) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as err:
        raise CorpusError(f"cannot write the corpus cache under '{target.parent}' ({err.strerror}); "
                          f"pass a writable cache_dir") from None


def _move_into_place(staging: Path, target: Path) -> None:
    """The finished store becomes the cache in one rename: a crash never leaves a half cache."""
    if target.exists():  # a damaged or another process's copy: ours replaces a damaged one
        if _open_cache(target) is not None:
            return  # another process finished the same cache first; its copy is identical
        shutil.rmtree(target)
    staging.rename(target)
