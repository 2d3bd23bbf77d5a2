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
import os
import pickle
import shutil
from collections import Counter
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ernie_cl import faults
from ernie_cl.corpus import cache, parts, phrases as span_sources, readers
from ernie_cl.corpus.document import Document
from ernie_cl.corpus.durable import file_sha256, fsync_dir, fsync_file, write_json_durably
from ernie_cl.corpus.store import DocumentStore, DocumentView, StoreWriter, finish_store, id_hash, write_shard
from ernie_cl.corpus.workers import SHARED, ordered_map
from ernie_cl.corpus.sentences import MAX_SENTENCE_CHARS, RawDocument, build_document
from ernie_cl.errors import CacheMissingError, CorpusError, DataBuildError, ErnieClError

SOURCES = ("bundled", "wiki", "txt", "jsonl", "hf", "lines", "bundled_plus")
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
                 title_field: str) -> tuple[str, Any, int | None]:
    """(content hash, plan(stats) -> parse parts, input bytes when known: for the progress bar's
    ETA) for one source; validates the path first.
    Hashing reads every source file, so an unreadable one is reported here, before any parsing."""
    try:
        return _open_readable_source(source, path, split, text_field, title_field)
    except OSError as err:  # permission denied, an I/O error, a folder where a file should be
        raise readers.unreadable(Path(err.filename or str(path)), err) from None


def _open_readable_source(source: str, path: str | Path | None, split: str, text_field: str,
                          title_field: str) -> tuple[str, Any, int | None]:
    if source in ("bundled", "bundled_plus"):
        if path is not None:
            raise CorpusError(f"source '{source}' takes no path (got '{path}'); drop the path, or pick "
                              f"the source that reads it: wiki, txt, jsonl, hf or lines")
        wiki_path, lee_path = readers.bundled_paths()
        content = cache.hash_files([wiki_path, lee_path])
        plus = readers.bundled_plus_paths() if source == "bundled_plus" else None
        if plus is not None:  # every file read is hashed: a changed package file is a new cache key
            leads, bbc, bbc_files = plus
            content = cache.hash_values(bundled=content, leads=cache.hash_files([leads]),
                                        bbc=cache.hash_files(bbc_files, root=bbc))

        def plan_bundled(stats: Counter) -> Iterator[parts.Part]:
            yield from parts.wiki_parts(wiki_path, stats)
            yield from parts.line_parts("lines", lee_path)
            if plus is not None:
                yield from parts.wiki_lead_parts(leads, stats)
                yield from parts.txt_parts(bbc, bbc_files, kind="bbc")

        return content, plan_bundled, None
    if source == "wiki":
        dump = _existing(path, source, "MediaWiki .xml or .xml.bz2 file")
        return cache.hash_files([dump]), lambda stats: parts.wiki_parts(dump, stats), None
    if source == "lines":
        lines = _existing(path, source, "text file with one document per line")
        return cache.hash_files([lines]), lambda stats: parts.line_parts("lines", lines), lines.stat().st_size
    if source == "txt":
        folder = _existing(path, source, ".txt folder")
        files = readers.txt_files(folder)
        return (cache.hash_files(files, root=folder), lambda stats: parts.txt_parts(folder),
                sum(f.stat().st_size for f in files))
    if source == "jsonl":
        jsonl = _existing(path, source, "JSONL file")
        return (cache.hash_files([jsonl]), lambda stats: parts.line_parts("jsonl", jsonl, (text_field, title_field)),
                jsonl.stat().st_size)
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
        columns = set(dataset.column_names)
        if text_field not in columns:  # checked here, before any worker starts
            raise CorpusError(f"dataset '{path}' has no column '{text_field}' (columns: "
                              f"{', '.join(sorted(columns))}); set text_field to the text column")
        return content, lambda stats: parts.hf_parts(str(path), dataset, split, text_field, title_field), None
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


def _ingest(plan: Any, stats: Counter, staging: Path, *, max_documents: int | None, use_phrases: bool,
            phrase_min_count: int, phrase_threshold: float, spacy_model: str | None,
            show_progress: bool, workers: int = 1, total_bytes: int | None = None) -> tuple[Path, dict[str, int]]:
    """Parse the source into a store under ``staging``; returns its folder and document counts.

    The source is cut into parts (``parts.py``, a function of its bytes alone); ``workers``
    processes parse one part each into one shard, written with a completion marker (shard sha256,
    counters, phrase counts), and send back the marker, merged here in part order. A rerun after a
    kill finds ``staging`` and reuses every shard whose marker checks out, so the store is the same
    as an uninterrupted build's, whatever the number of workers. A second pass (in the workers too,
    resumable the same way) adds the phrase and spaCy spans shard by shard. With ``max_documents``
    the documents are parsed one at a time here (the count decides where to stop)."""
    from ernie_cl.progress import progress_bar

    nlp = span_sources.load_spacy(spacy_model) if spacy_model else None  # fail before the long parse
    two_passes = use_phrases or nlp is not None
    final_folder = staging / "final"
    first_folder = staging / "pass1" if two_passes else final_folder
    first_folder.mkdir(parents=True, exist_ok=True)
    counter = span_sources.PhraseCounter(phrase_min_count, phrase_threshold) if use_phrases else None
    with progress_bar(desc="parsing corpus", unit="B", unit_scale=True, total=total_bytes,
                      disable=not show_progress) as bar:
        if max_documents is not None:
            shards = _parse_one_by_one(plan, stats, first_folder, max_documents, counter, bar)
        else:
            shards = []
            tally: Counter = Counter()
            items = ((i, part) for i, part in enumerate(plan(stats)))
            for shard, batch_stats, counts, status in ordered_map(
                    _parse_part, items, workers, folder=first_folder, phrases=use_phrases,
                    phrase_options=(phrase_min_count, phrase_threshold)):
                shards.append(shard)
                stats.update(batch_stats)
                if counter is not None:
                    counter.merge(*counts)
                tally[status] += 1
                tally["documents"] += shard["documents"]
                bar.update(shard.get("input_bytes", 0))
                bar.set_postfix_str(f"{tally['documents']:,} docs, {tally['documents'] / max(bar.format_dict['elapsed'], 1e-9):,.0f} docs/s",
                                    refresh=False)
            _log_reuse("parsed corpus", first_folder, tally, len(shards))
    _check_unique_ids(first_folder, shards)
    counts = finish_store(first_folder, shards)
    if not two_passes:
        return first_folder, counts
    final_folder.mkdir(parents=True, exist_ok=True)
    with progress_bar(total=len(shards), desc="adding phrase spans", unit=" shards", disable=not show_progress) as bar:
        final, tally = [], Counter()
        for shard, entities, status in ordered_map(_annotate_shard, range(len(shards)), 1 if nlp is not None else workers,
                                                   source=DocumentStore(first_folder), folder=final_folder, nlp=nlp,
                                                   matcher=span_sources.PhraseMatcher(counter.frozen()) if counter is not None else None):
            final.append(shard)
            tally[status] += 1
            if nlp is not None:
                stats["spacy_entities"] += entities
            bar.update(1)
        _log_reuse("phrase-annotated corpus", final_folder, tally, len(final))
    return final_folder, finish_store(final_folder, final)


def _log_reuse(what: str, folder: Path, tally: Counter, total: int) -> None:
    if tally["reused"] or tally["rebuilt"]:
        logger.warning("%s: reused %d of %d shards of an interrupted build in %s%s", what, tally["reused"], total,
                       folder, f"; {tally['rebuilt']} damaged shard(s) were built again" if tally["rebuilt"] else "")


def _check_unique_ids(folder: Path, shards: list[dict[str, Any]]) -> None:
    """Refuse a duplicate document id anywhere in the corpus: equal 8-byte id hashes, confirmed by
    decoding the documents (an array of the hashes, never a set of every id)."""
    hashes = np.array([h for s in shards for h in s["hashes"]], dtype=np.uint64)
    order = np.argsort(hashes, kind="stable")
    same = np.nonzero(hashes[order][1:] == hashes[order][:-1])[0]
    if not len(same):
        return
    starts = np.cumsum([0] + [s["documents"] for s in shards])

    def doc_id(index: int) -> str:
        shard = int(np.searchsorted(starts, index, side="right") - 1)
        return _decode_id(folder, shards[shard]["file"], int(index - starts[shard]))

    for k in same:
        first, second = int(order[k]), int(order[k + 1])
        if doc_id(first) == doc_id(second):
            raise CorpusError(f"duplicate document id '{doc_id(first)}' in the corpus (documents {first + 1} and "
                              f"{second + 1} in reading order); ids must be unique")


def _decode_id(folder: Path, file: str, row: int) -> str:
    import pyarrow as pa

    with pa.memory_map(str(folder / file), "r") as source:
        return pa.ipc.open_file(source).read_all().column("id")[row].as_py()


def _kept(raw: RawDocument, stats: Counter) -> Document | None:
    document = build_document(raw, stats=stats)
    if document.num_sentences() == 0:
        stats["empty_documents_dropped"] += 1
        return None
    return document


def _parse_part(item: tuple[int, Any]) -> tuple[dict[str, Any], Counter, Any, str]:
    """In a worker: the sentences of one part, written as shard ``index`` with its marker; the
    marker's shard entry, counters and phrase counts go back (read from the marker when a killed
    run had finished this shard already)."""
    index, part = item
    folder: Path = SHARED["folder"]
    done, status = _finished_shard(folder, index)
    if done is not None:
        return done["shard"], Counter(done["stats"]), _read_counts(folder, done), status
    stats: Counter = Counter()
    documents = [d for d in (_kept(raw, stats) for raw in parts.read_part(part, stats)) if d is not None]
    counts = None
    if SHARED["phrases"]:
        counter = span_sources.PhraseCounter(*SHARED["phrase_options"])
        for document in documents:
            counter.add(document)
        counts = counter.counts()
    shard = _write_durable_shard(folder, index, documents, stats=dict(stats), counts=counts,
                                 input_bytes=parts.part_size(part))
    return shard, stats, counts, status


def _annotate_shard(index: int) -> tuple[dict[str, Any], int, str]:
    """In a worker: first-pass shard ``index`` with its phrase (and spaCy entity) spans, written again."""
    folder: Path = SHARED["folder"]
    done, status = _finished_shard(folder, index)
    if done is not None:
        return done["shard"], done["stats"].get("entities", 0), status
    source: DocumentStore = SHARED["source"]
    documents = source.decode(int(source.starts[index]), int(source.starts[index + 1]))
    entities = span_sources.add_spacy_entities(documents, SHARED["nlp"]) if SHARED["nlp"] is not None else 0
    if SHARED["matcher"] is not None:
        for document in documents:
            span_sources.annotate_phrases(document, SHARED["matcher"])
    return _write_durable_shard(folder, index, documents, stats={"entities": entities}), entities, status


def _marker_path(folder: Path, index: int) -> Path:
    return folder / f"docs-{index:05d}.done.json"


def _write_durable_shard(folder: Path, index: int, documents: list[Document], *, stats: dict[str, int],
                         counts: Any = None, input_bytes: int = 0) -> dict[str, Any]:
    """Shard ``index`` and its completion marker, each written under a temporary name, fsynced and
    renamed, the marker last: a kill at any moment leaves either a finished shard or none."""
    tmp = folder / f".tmp-{os.getpid()}-{index}"
    tmp.mkdir(exist_ok=True)
    shard = write_shard(tmp, index, documents)
    shard["input_bytes"] = input_bytes
    files = {shard["file"]: tmp / shard["file"]}
    if counts is not None:
        with open(tmp / "phrases.pkl", "wb") as handle:
            pickle.dump(counts, handle, protocol=pickle.HIGHEST_PROTOCOL)
        files[f"docs-{index:05d}.phrases.pkl"] = tmp / "phrases.pkl"
    digests = {}
    for name, written in files.items():
        fsync_file(written)
        digests[name] = file_sha256(written)
        os.replace(written, folder / name)
    tmp.rmdir()
    fsync_dir(folder)
    write_json_durably(_marker_path(folder, index), {"shard": shard, "stats": stats, "sha256": digests})
    faults.inject(f"corpus-shard:{folder.name}:{index}")  # tests kill a parse here, between two shards
    return shard


def _finished_shard(folder: Path, index: int) -> tuple[dict[str, Any] | None, str]:
    """(marker, "reused") for a finished shard whose files match their sha256; (None, "built") when
    there is none; (None, "rebuilt") when one is damaged (it is built again)."""
    path = _marker_path(folder, index)
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
        if all(file_sha256(folder / name) == digest for name, digest in marker["sha256"].items()):
            return marker, "reused"
    except FileNotFoundError:
        if not path.exists():
            return None, "built"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None, "rebuilt"


def _read_counts(folder: Path, marker: dict[str, Any]) -> Any:
    names = [n for n in marker["sha256"] if n.endswith(".phrases.pkl")]
    if not names:
        return None
    with open(folder / names[0], "rb") as handle:
        return pickle.load(handle)


def _parse_one_by_one(plan: Any, stats: Counter, folder: Path, max_documents: int,
                      counter: Any, bar: Any) -> list[dict[str, Any]]:
    shutil.rmtree(folder, ignore_errors=True)  # a capped corpus is small: parsed again from the start
    writer = StoreWriter(folder)
    for part in plan(stats):
        for raw in parts.read_part(part, stats):
            document = _kept(raw, stats)
            if document is None:
                continue
            writer.add(document)
            if counter is not None:
                counter.add(document)
            if len(writer) >= max_documents:
                writer.close()
                return writer.shards
        bar.update(parts.part_size(part))
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
                show_progress: bool = True, workers: int = 1, build: bool = True) -> Corpus:
    """Load (parse once, then from the Arrow cache) a corpus and split off held-out documents.
    ``build=False``: only from the cache (a CacheMissingError when it is not there)."""
    _check_options(eval_fraction, max_documents, phrase_min_count, phrase_threshold)
    content, read, total_bytes = _open_source(source, path, split, text_field, title_field)
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
    if cached is None and not build:
        raise CacheMissingError(f"no parsed corpus for this schedule in '{target.parent}'")
    if cached is None:
        stats: Counter = Counter()
        staging = _staging_folder(target)
        try:
            folder, counts = _ingest(read, stats, staging, max_documents=max_documents, use_phrases=phrases,
                                     phrase_min_count=phrase_min_count, phrase_threshold=phrase_threshold,
                                     spacy_model=spacy_model, show_progress=show_progress, workers=workers,
                                     total_bytes=total_bytes)
            if not counts["documents"]:
                where = f"'{path}'" if path is not None else f"source '{source}'"
                hint = f" (or check text_field='{text_field}')" if source in ("jsonl", "hf") else ""
                raise CorpusError(f"corpus {where} is empty: no document has any text; add documents "
                                  f"with text{hint}")
        except BrokenProcessPool:  # a worker died (often the OOM killer): keep what is finished
            raise DataBuildError(f"a corpus parsing worker process died (killed by the system, often for lack of "
                                 f"memory); the finished shards are kept in {staging}: run again with fewer "
                                 "workers (--workers 1) or more free memory to continue") from None
        except ErnieClError:  # bad input: nothing of it stays in the cache (a fixed input has another key)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        # Any other failure (a kill, a dead worker) leaves the staging folder: a rerun reuses its shards.
        meta = {"reader": dict(stats), "counts": counts}
        for marker in folder.glob("docs-*.done.json"):
            marker.unlink()
        for extra in folder.glob("docs-*.phrases.pkl"):
            extra.unlink()
        write_json_durably(folder / cache.META_FILE, meta)
        _move_into_place(folder, target)
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
    """``.<key>.partial`` beside the target: the same folder for every run of the same key, so a
    run after a kill finds the shards the killed one finished."""
    try:
        staging = target.parent / f".{target.name}.partial"
        staging.mkdir(parents=True, exist_ok=True)
        return staging
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
