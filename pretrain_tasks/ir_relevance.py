"""IR relevance (ERNIE 2.0): how relevant is a passage to a query: 0 strong, 1 weak, 2 irrelevant.

Input: ``[CLS] query [SEP] passage [SEP]`` (segment ids 0 then 1); the label is predicted from [CLS].

ERNIE 2.0 labelled (query, title) pairs from Baidu's search logs: clicked (strong), shown but not
clicked (weak), random (irrelevant). Those logs are private, so by default this task builds a
self-supervised stand-in from document structure, with a real lexical ranker playing the search
engine:

- passages: every paragraph of the split cut into runs of at most ``passage_sentences``
  consecutive sentences; the passages (untitled documents too) form BM25 indexes (``bm25s``,
  Lucene scoring, English stop words removed), built in ``fit``: one per bucket, a run of documents
  with ``bm25_bucket_chars`` (20 million) characters of passage text, so that the cost stays linear
  in the corpus and only one index is in memory at a time. A split smaller than that (the bundled
  corpus is 3 million) is one bucket: one index over the whole split. Beyond it, "shown high in
  the results" means high among the query's bucket;
- queries: for every section with text of a document WITH a title: the title for the lead section
  (heading ""), "title heading" for the other sections. Untitled documents ask no query;
- strong (0): a passage of the query's own section, drawn at random: what the searcher clicked;
- weak (1): the passage of ANOTHER document (of the bucket) that BM25 ranks highest for the query: shown high in
  the results but not what was wanted. The ranking keeps the ``top_k`` best other-document
  passages with a positive score. When the query's words occur in no other document (a rare
  title), the query is expanded with the first passage of its section (pseudo-relevance feedback)
  and ranked again;
- irrelevant (2): a random passage of another document of the whole split, outside that top-k list.

Every query yields exactly one example of each class (classes balanced by construction); a query
with no weak candidate even after expansion, or no irrelevant candidate, yields none. A split needs
one titled document with text and one other document with text (untitled ones serve as weak and
irrelevant passages), else ``fit`` raises CorpusError.

Real relevance data: with ``data_file: PATH`` (``.tsv``: query, passage, label per line, an optional
``query<TAB>passage<TAB>label`` header; ``.jsonl``: objects with those keys; labels 0/1/2 or
strong/weak/irrelevant) the examples are the file's rows instead. The task protocol does not tell a
task which split it serves, so every row is used in the train AND the held-out split (each row is
carried by one document of the split, chosen by a hash of its query): the held-out metric then
measures fit to the file, not generalization (a protocol that named the split would allow a
hash split of the rows by query).
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import re
from array import array
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np

from ernie_cl.corpus.document import Document
from ernie_cl.corpus.store import id_hash
from ernie_cl.corpus.workers import SHARED, current_workers, map_ranges, ordered_map
from ernie_cl.data.tokenizer import TextTokenizer
from ernie_cl.errors import ConfigError, CorpusError

from ._segments import SentenceTask, join_segments, split_segments
from ._text_table import BytesTable, RunsById, TextTable, encode_texts
from .base import register_task

RELEVANCE = ("strong", "weak", "irrelevant")
STRONG, WEAK, IRRELEVANT = 0, 1, 2


@dataclass(frozen=True)
class Query:
    text: str
    passages: range  # the section's own passages (indices into the split's passage list)
    ranked: tuple[int, ...]  # other documents' passages, BM25's top-k for the query, best first


def cut_passages(sentences: Sequence[str], size: int) -> list[str]:
    """A paragraph as runs of at most ``size`` consecutive sentences."""
    return [" ".join(sentences[i:i + size]) for i in range(0, len(sentences), size)]


def query_text(title: str, heading: str) -> str:
    return title if not heading else f"{title} {heading}"


def _parse_label(value: Any) -> int | None:
    if isinstance(value, str):
        value = value.strip().lower()
        if value in RELEVANCE:
            return RELEVANCE.index(value)
        value = int(value) if value in ("0", "1", "2") else value
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(RELEVANCE) else None


def _row_fields(line: str, jsonl: bool, where: str) -> list[Any]:
    """[query, passage, label] of one line, unchecked; [] for a TSV header."""
    if jsonl:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{where}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise CorpusError(f"{where}: expected an object with keys query, passage, label")
        return [record.get("query"), record.get("passage"), record.get("label")]
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) != 3:
        raise CorpusError(f"{where}: expected 3 tab-separated columns (query, passage, label), found {len(fields)}")
    return [] if [f.strip().lower() for f in fields] == ["query", "passage", "label"] else fields


def read_relevance_file(path: str) -> list[tuple[str, str, int]]:
    """(query, passage, label) rows of a .tsv or .jsonl file; a malformed row is a CorpusError
    naming the file and line."""
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            lines = list(handle)
    except (OSError, UnicodeDecodeError) as exc:  # unreadable, or not UTF-8 text
        raise CorpusError(f"task 'ir_relevance': cannot read data_file {path}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        where = f"task 'ir_relevance': {path}:{number}"
        fields = _row_fields(line, path.lower().endswith(".jsonl"), where) if line.strip() else []
        if not fields:  # a blank line or a TSV header
            continue
        query, passage, label = fields
        if not (isinstance(query, str) and query.strip() and isinstance(passage, str) and passage.strip()):
            raise CorpusError(f"{where}: query and passage must be non-empty text")
        parsed = _parse_label(label)
        if parsed is None:
            raise CorpusError(f"{where}: label {label!r} is not one of 0, 1, 2, strong, weak, irrelevant")
        rows.append((query.strip(), passage.strip(), parsed))
    if not rows:
        raise CorpusError(f"task 'ir_relevance': data_file {path} holds no rows")
    return rows


class Bm25Ranker:
    """BM25 over a fixed list of passages; rankings are deterministic (ties go to the lower index).

    Terms are bm25s's default tokenization (lowercased ``\\b\\w\\w+\\b`` words, its English stop
    words removed), computed here with the stop-word set built once rather than once a text (bm25s
    rebuilds it for every text): the same terms and term ids, so the same index and rankings."""

    _TERM = re.compile(r"(?u)\b\w\w+\b")

    def __init__(self, passages: Iterable[str]):
        import bm25s  # lazy: only this task needs it
        from bm25s.stopwords import STOPWORDS_EN
        from bm25s.tokenization import Tokenized

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets DEBUG on import: noise in run logs

        self._stopwords = frozenset(STOPWORDS_EN)
        vocab: dict[str, int] = {}
        # passage by passage, each passage's term ids as 4-byte machine integers: a bucket's terms as
        # lists of str (then of int objects) held at once cost a worker some 200 MB at 20M characters;
        # bm25s only iterates, counts and measures each passage's ids, so the index is the same
        find = self._TERM.findall
        ids = [array("i", [vocab.setdefault(term, len(vocab)) for term in find(text.lower()) if term not in self._stopwords])
               for text in passages]
        self.retriever = bm25s.BM25()
        self.retriever.index(Tokenized(ids=ids, vocab=vocab), show_progress=False)

    def terms(self, texts: Sequence[str]) -> list[list[str]]:
        find, stop = self._TERM.findall, self._stopwords
        return [[term for term in find(text.lower()) if term not in stop] for text in texts]

    def rank(self, terms: Sequence[str], exclude: range, k: int) -> list[int]:
        """The ``k`` best passages with a positive score outside ``exclude``, best first."""
        ids = self.retriever.get_tokens_ids(list(terms))
        if not ids:
            return []
        scores = np.asarray(self.retriever.get_scores_from_ids(ids), dtype=np.float64)
        scores[exclude.start:exclude.stop] = 0.0
        hits = np.flatnonzero(scores > 0)
        if len(hits) > k:  # sort only what can be in the top k: every hit scoring at least the k-th best
            top = scores[hits]
            hits = hits[top >= np.partition(top, len(top) - k)[len(top) - k]]
        order = np.lexsort((hits, -scores[hits]))[:k]
        return hits[order].tolist()


def document_passages(size: int, documents: Sequence[Document]) -> tuple[list, bytes, np.ndarray, np.ndarray]:
    """What ``fit`` needs of a range of documents, read in a worker: per document (id, has text,
    titled with text, sections), each section as (its query, or None for an untitled document or
    a section without text; its number of passages); then every passage of the range encoded for
    ``TextTable.extend`` and each passage's length in characters (buckets are measured in them)."""
    out, passages = [], []
    for doc in documents:
        has_text = doc.num_sentences() > 0
        title = doc.title.strip()
        sections = []
        for section in doc.sections:
            texts = [p for paragraph in section.paragraphs for p in cut_passages([s.text for s in paragraph], size)]
            sections.append((query_text(title, section.heading.strip()) if title and texts else None, len(texts)))
            passages += texts
        out.append((doc.id, has_text, bool(has_text and title), sections))
    data, ends = encode_texts(passages)
    return out, data, ends, np.fromiter(map(len, passages), dtype=np.int64, count=len(passages))


def rank_bucket(job: tuple) -> tuple[int, list[list[int]], int]:
    """In a worker: one bucket's BM25 index and every query's top-k passages of other documents
    of the bucket (positions in the bucket): (bucket start, rankings, queries expanded). A query
    whose words occur in no other document is expanded with its section's first passage (pseudo-
    relevance feedback) and ranked again. The index is dropped afterwards."""
    lo, hi, texts, owns, firsts, k = job
    table = SHARED["passages"]
    ranker = Bm25Ranker(text for start in range(lo, hi, 4096) for text in table.run(start, min(hi, start + 4096)))
    local = [range(a, b) for a, b in owns]
    rankings = [ranker.rank(terms, own, k) for own, terms in zip(local, ranker.terms(texts))]
    missing = [i for i, ranked in enumerate(rankings) if not ranked]
    expanded = ranker.terms([f"{texts[i]} {table[lo + firsts[i]]}" for i in missing])
    for i, terms in zip(missing, expanded):
        rankings[i] = ranker.rank(terms, local[i], k)
    return lo, rankings, len(missing)


@register_task
class IrRelevance(SentenceTask):
    """Query-passage relevance in three grades; see the module docstring."""

    name = "ir_relevance"
    version: ClassVar[int] = 1
    default_options: ClassVar[dict[str, Any]] = {
        "passage_sentences": 3,  # a passage is at most this many consecutive sentences of a paragraph
        "top_k": 10,  # BM25 results (other documents) that count as shown: weak = the 1st; irrelevant from outside
        "data_file": None,  # TSV/JSONL of real (query, passage, label) rows used instead of the corpus
        "bm25_bucket_chars": 20_000_000,  # one BM25 index per run of documents with this much passage text
    }

    def __init__(self, tokenizer: TextTokenizer, seq_len: int, options: dict[str, Any] | None = None):
        super().__init__(tokenizer, seq_len, options)
        self.passages = TextTable()  # every passage of the split, document after document
        # every query, in document order: its text, and its record (own section's passage range,
        # then BM25's ranking) as int64s; each document's queries are a run of them. Files, like
        # the passages: the parent and every forked worker hold no object per query.
        self._query_texts, self._query_records, self._query_runs = TextTable(), BytesTable(), RunsById()
        self.expanded_queries = 0  # queries ranked again with their section's first passage
        self._doc_runs = RunsById()  # document id -> the run of its passages
        self._rows: dict[str, list[tuple[str, str, int]]] = {}  # data_file mode: document id -> rows

    def validate_options(self) -> None:
        for key in ("passage_sentences", "top_k", "bm25_bucket_chars"):
            value = self.options[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"task 'ir_relevance': {key}={value!r} must be an integer >= 1, e.g. {self.default_options[key]}")
        path = self.options["data_file"]
        if path is not None:
            if not isinstance(path, str) or Path(path).suffix.lower() not in (".tsv", ".jsonl"):
                raise ConfigError(f"task 'ir_relevance': data_file={path!r} must be a .tsv or .jsonl file of query, passage, label rows")
            if not Path(path).is_file():
                raise ConfigError(f"task 'ir_relevance': data_file '{path}' does not exist")

    @property
    def num_labels(self) -> int:
        return len(RELEVANCE)

    def label_name(self, label: int) -> str:
        return RELEVANCE[label] if 0 <= label < len(RELEVANCE) else str(label)

    # --- fit: the passage index and every query's ranking ----------------------------------------
    def fit(self, documents: Sequence[Document]) -> None:
        if self.options["data_file"] is not None:
            self._fit_rows(documents)
            return
        self.passages, self._doc_runs, self.expanded_queries = TextTable(), RunsById(), 0
        self._query_texts, self._query_records, self._query_runs = TextTable(), BytesTable(), RunsById()
        buckets, titled, with_text = self._read_buckets(documents)
        self.passages.flush()  # every passage is in the table before the workers start
        k = self.options["top_k"]
        jobs = [(lo, hi, [text for _, text, _, _ in pending], [(own.start - lo, own.stop - lo) for *_, own in pending],
                 [passages.start - lo for _, _, passages, _ in pending], k) for lo, hi, pending in buckets]
        # one bucket a worker at a time (an index is some hundreds of MB); each reads its bucket's
        # passages from the table (a file every forked worker shares), so no passage travels
        ranked_buckets = ordered_map(rank_bucket, jobs, current_workers(), in_flight=current_workers(),
                                     passages=self.passages)
        for (_, _, pending), (lo, rankings, expanded) in zip(buckets, ranked_buckets):
            self.expanded_queries += expanded
            self._store_queries(pending, [[lo + r for r in ranked] for ranked in rankings])
        if titled < 1 or with_text < 2:
            raise CorpusError(f"task 'ir_relevance' needs a document with a title and text (titles and headings are its queries) "
                              f"and another document with text in the split; found {titled} titled of {with_text} with text "
                              f"among {len(documents)}: use a larger or titled corpus, or give data_file")
        self._doc_runs.freeze()
        self._query_texts.flush()
        self._query_records.flush()
        self._query_runs.freeze()

    def _store_queries(self, pending: list[tuple[str, str, range, range]], rankings: list[list[int]]) -> None:
        """Append one bucket's queries (in document order, a document's queries together) to the tables."""
        for doc_id, group in itertools.groupby(zip(pending, rankings), key=lambda item: item[0][0]):
            start = len(self._query_texts)
            for (_, text, passages, _), ranked in group:
                self._query_texts.append(text)
                self._query_records.append(array("q", [passages.start, passages.stop, *ranked]).tobytes())
            self._query_runs.add(doc_id, start, len(self._query_texts))

    def queries_of(self, doc_id: str) -> list[Query]:
        """The document's queries (none for a document without a title), in section order."""
        out = []
        for i in self._query_runs.get(doc_id):
            record = np.frombuffer(self._query_records[i], dtype=np.int64).tolist()
            out.append(Query(self._query_texts[i], range(record[0], record[1]), tuple(record[2:])))
        return out

    @property
    def num_queries(self) -> int:
        return len(self._query_texts)

    def passage_owner(self, index: int) -> int:
        """The position in the split of the document that passage ``index`` belongs to."""
        return self._doc_runs.position_of(index)

    def _read_buckets(self, documents: Sequence[Document]) -> tuple[list[tuple[int, int, list]], int, int]:
        """Read the split once (the documents are read by the workers, ``map_ranges``): passages
        into the table, document runs, and the buckets as (first passage, end, queries); with the
        counts of titled documents with text and of documents with text."""
        bucket_chars = self.options["bm25_bucket_chars"]
        buckets: list[tuple[int, int, list]] = []
        bucket_start = bucket_text = titled = with_text = 0
        pending: list[tuple[str, str, range, range]] = []  # (doc id, query, section's passages, document's)
        for part, data, ends, chars in map_ranges(partial(document_passages, self.options["passage_sentences"]), documents):
            first = len(self.passages)
            self.passages.extend(data, ends)
            chars_before = np.concatenate([[0], np.cumsum(chars)]).tolist()  # characters before each passage of the part
            position = first
            for doc_id, has_text, is_titled, sections in part:
                titled, with_text = titled + is_titled, with_text + has_text
                start, queries = position, []
                for query, count in sections:
                    if query is not None:
                        queries.append((query, range(position, position + count)))
                    position += count
                own = range(start, position)
                pending += [(doc_id, query, passages, own) for query, passages in queries]
                self._doc_runs.add(doc_id, own.start, own.stop)
                bucket_text += chars_before[position - first] - chars_before[start - first]
                if bucket_text >= bucket_chars:  # buckets end at a document's end
                    buckets.append((bucket_start, position, pending))
                    bucket_start, bucket_text, pending = position, 0, []
        if len(self.passages) > bucket_start:
            buckets.append((bucket_start, len(self.passages), pending))
        return buckets, titled, with_text

    def _fit_rows(self, documents: Sequence[Document]) -> None:
        if not documents:
            raise CorpusError("task 'ir_relevance' with data_file needs at least 1 document in the split to carry its rows")
        carriers = sorted(doc.id for doc in documents)
        self._rows = {}
        for row in read_relevance_file(self.options["data_file"]):
            self._rows.setdefault(carriers[id_hash(row[0]) % len(carriers)], []).append(row)

    # --- examples ---------------------------------------------------------------------------------
    def plan(self, doc: Document, rng: random.Random) -> list[tuple[Query, int, int]]:
        """(query, passage index, label) of one document's examples (corpus mode)."""
        chosen = []
        for query in self.queries_of(doc.id):
            if not query.ranked:
                continue
            strong = rng.choice(query.passages)
            irrelevant = self._draw_irrelevant(self._doc_runs.get(doc.id), set(query.ranked), rng)
            if irrelevant is not None:
                chosen += [(query, strong, STRONG), (query, query.ranked[0], WEAK), (query, irrelevant, IRRELEVANT)]
        return chosen

    def triples(self, doc: Document, rng: random.Random) -> list[tuple[str, str, int]]:
        """(query, passage, label) rows of one document, before tokenization."""
        if self.options["data_file"] is not None:
            return list(self._rows.get(doc.id, []))
        return [(query.text, self.passages[passage], label) for query, passage, label in self.plan(doc, rng)]

    def _draw_irrelevant(self, own: range, shown: set[int], rng: random.Random) -> int | None:
        """A uniformly random passage outside the query's document and its top-k list."""
        total = len(self.passages)
        for _ in range(32):  # almost always enough: own document and top-k are a small part of the split
            index = rng.randrange(total)
            if index not in own and index not in shown:
                return index
        allowed = [i for i in range(total) if i not in own and i not in shown]
        return rng.choice(allowed) if allowed else None

    def build_examples(self, doc: Document, rng: random.Random) -> list[dict[str, list[int]]]:
        rows = self.triples(doc, rng)
        if not rows:
            return []
        texts = list(dict.fromkeys(text for query, passage, _ in rows for text in (query, passage)))
        encoded = dict(zip(texts, (e.ids for e in self.tokenizer.encode_batch(texts))))
        examples = []
        for query, passage, label in rows:
            ids, types = join_segments(self.tokenizer, [encoded[query], encoded[passage]], self.seq_len)
            examples.append({"input_ids": ids, "token_type_ids": types, "labels": [label]})
        return examples

    def describe_example(self, example: dict[str, list[int]]) -> str:
        query, passage = split_segments(self.tokenizer, example["input_ids"])[:2]
        label = example["labels"][0]
        return "\n".join([f"  query: {self.tokenizer.decode(query)}", f"  passage: {self.tokenizer.decode(passage)}",
                          f"  relevance: {label} ({self.label_name(label)})"])
