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
from ernie_cl.corpus.store import DocumentStore, DocumentView, StoreWriter, id_hash
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


def _ingest(read: Any, stats: Counter, target: Path, *, max_documents: int | None, use_phrases: bool,
            phrase_min_count: int, phrase_threshold: float, spacy_model: str | None,
            show_progress: bool) -> dict[str, int]:
    """Parse the source into a store at ``target`` (a fresh folder); returns the document counts."""
    from ernie_cl.progress import progress_bar

    nlp = span_sources.load_spacy(spacy_model) if spacy_model else None  # fail before the long parse
    two_passes = use_phrases or nlp is not None
    writer = StoreWriter(target / "pass1" if two_passes else target)
    counter = span_sources.PhraseCounter(phrase_min_count, phrase_threshold) if use_phrases else None
    seen: set[int] = set()  # 8-byte id hashes: a duplicate id is found without keeping every id
    # closing() stops a streaming reader early (max_documents) and closes its file
    with closing(read(stats)) as stream, progress_bar(desc="parsing corpus", unit=" docs",
                                               disable=not show_progress) as bar:
        for raw in stream:
            key = id_hash(raw.id)
            if key in seen:
                raise CorpusError(f"duplicate document id '{raw.id}' in the corpus; ids must be unique")
            seen.add(key)
            document = build_document(raw, stats=stats)
            bar.update(1)
            if document.num_sentences() == 0:
                stats["empty_documents_dropped"] += 1
                continue
            writer.add(document)
            if counter is not None:
                counter.add(document)
            if max_documents is not None and len(writer) >= max_documents:
                break
    writer.close()
    if not two_passes:
        return writer.counts
    first = DocumentStore(target / "pass1")
    frozen = counter.frozen() if counter is not None else None
    final = StoreWriter(target)
    with progress_bar(total=len(first), desc="adding phrase spans", unit=" docs", disable=not show_progress) as bar:
        for start in range(0, len(first), 256):
            batch = first.decode(start, min(start + 256, len(first)))
            if nlp is not None:
                stats["spacy_entities"] += span_sources.add_spacy_entities(batch, nlp)
            for document in batch:
                if frozen is not None:
                    span_sources.annotate_phrases(document, frozen)
                final.add(document)
            bar.update(len(batch))
    final.close()
    del first
    shutil.rmtree(target / "pass1")
    return final.counts


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
                show_progress: bool = True) -> Corpus:
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
    meta = _read_meta(target)
    if meta is None:
        stats: Counter = Counter()
        staging = _staging_folder(target)
        try:
            counts = _ingest(read, stats, staging, max_documents=max_documents, use_phrases=phrases,
                             phrase_min_count=phrase_min_count, phrase_threshold=phrase_threshold,
                             spacy_model=spacy_model, show_progress=show_progress)
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
        from_cache = False
    else:
        from_cache = True
    store = DocumentStore(target)
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


def _read_meta(target: Path) -> dict[str, Any] | None:
    """The finished store's counters (its completion marker), or None when there is none."""
    try:
        meta = json.loads((target / cache.META_FILE).read_text(encoding="utf-8"))
        DocumentStore(target)  # the shard list and arrays must be readable too
        return meta if {"reader", "counts"} <= set(meta) else None
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
        if _read_meta(target) is not None:
            return  # another process finished the same cache first; its copy is identical
        shutil.rmtree(target)
    staging.rename(target)
