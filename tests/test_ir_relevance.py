"""ir_relevance: a strong passage comes from the query's own section, a weak one is BM25's best passage
of another document, an irrelevant one is a random passage of another document outside BM25's
top-k; classes are balanced; real (query, passage, label) files are read, or refused line by line."""

from __future__ import annotations

import json
import random
from collections import Counter

import bm25s
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ernie_cl.corpus.document import Document, Section, Sentence
from ernie_cl.errors import ConfigError, CorpusError
from pretrain_tasks import get_task_class
from pretrain_tasks._segments import split_segments

VOCAB = ["river", "bridge", "museum", "garden", "harbour", "letter", "machine", "palace", "library", "street",
         "painting", "school", "lake", "boat", "music", "winter", "castle", "forest", "market", "island"]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def make(tokenizer, **options):
    return get_task_class("ir_relevance")(tokenizer, 128, options)


sentence = st.lists(st.sampled_from(VOCAB), min_size=2, max_size=6).map(lambda ws: " ".join(ws).capitalize() + ".")
paragraph = st.lists(sentence, min_size=1, max_size=5)


@st.composite
def corpus(draw):
    """2-6 documents, some untitled, titled ones with a lead section and 0-2 headed sections."""
    docs = []
    for i in range(draw(st.integers(2, 6))):
        title = " ".join(draw(st.lists(st.sampled_from(VOCAB), min_size=1, max_size=2))).title() if i < 2 or draw(st.booleans()) else ""
        headings = [""] + draw(st.lists(st.sampled_from(VOCAB), max_size=2, unique=True))
        sections = [Section(h.title(), [[Sentence(t) for t in p] for p in draw(st.lists(paragraph, min_size=1, max_size=3))])
                    for h in headings]
        docs.append(Document(f"doc{i}", title, sections))
    return docs


def runs(section: Section, size: int) -> set[str]:
    """Every passage the section can give: runs of <= size consecutive sentences of one paragraph."""
    return {" ".join(s.text for s in p[i:i + size]) for p in section.paragraphs for i in range(0, len(p), size)}


def bm25_scores(passages: list[str], query: str) -> np.ndarray:
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(passages, stopwords="en", show_progress=False), show_progress=False)
    ids = retriever.get_tokens_ids(bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0])
    return retriever.get_scores_from_ids(ids) if ids else np.zeros(len(passages))


@given(corpus(), st.integers(1, 3), st.integers(1, 4))
@SETTINGS
def test_strong_weak_and_irrelevant_passages_follow_their_definitions(tokenizer, docs, size, top_k):
    task = make(tokenizer, passage_sentences=size, top_k=top_k)
    task.fit(docs)
    passages = [(doc.id, " ".join(s.text for s in p[i:i + size]))
                for doc in docs for section in doc.sections for p in section.paragraphs for i in range(0, len(p), size)]
    owner_of = lambda index: docs[task.passage_owner(index)].id  # noqa: E731
    assert [text for _, text in passages] == task.passages and [d for d, _ in passages] == list(map(owner_of, range(len(passages))))
    owner = np.array([d for d, _ in passages])
    for doc in docs:
        plan = task.plan(doc, random.Random(doc.id))
        assert Counter(label for _, _, label in plan) == Counter({0: len(plan) // 3, 1: len(plan) // 3, 2: len(plan) // 3})
        for query, index, label in plan:
            section = next(s for s in doc.sections if query.text == (doc.title if not s.heading else f"{doc.title} {s.heading}"))
            passage = task.passages[index]
            if label == 0:
                assert owner_of(index) == doc.id and passage in runs(section, size)
                continue
            assert owner_of(index) != doc.id
            others = owner != doc.id
            scores = bm25_scores(task.passages, query.text)
            if not (scores[others] > 0).any():  # no other document shares a word: the query was expanded
                first = " ".join(s.text for s in section.paragraphs[0][:size])
                scores = bm25_scores(task.passages, f"{query.text} {first}")
            if label == 1:
                assert scores[index] > 0 and scores[index] == pytest.approx(scores[others].max())
            else:
                better = int((scores[others] >= scores[index]).sum()) - 1
                assert scores[index] == 0 or better >= top_k, "an irrelevant passage from BM25's top-k"


def test_weak_is_the_best_other_document_passage_and_irrelevant_lies_outside_the_top_k(tokenizer):
    docs = [
        Document("a", "Harbour", [Section("", [[Sentence("The harbour is busy."), Sentence("Ships wait.")]])]),
        Document("b", "", [Section("", [[Sentence("A museum, a school, a church and a harbour are in the old town by the grey sea.")],
                                        [Sentence("Bread is baked daily.")]])]),
        Document("c", "", [Section("", [[Sentence("Harbour after harbour.")], [Sentence("Snow fell on the hills.")],
                                        [Sentence("The lake froze in winter near a small harbour.")]])]),
    ]
    task = make(tokenizer, passage_sentences=1, top_k=3)
    task.fit(docs)
    rows = task.triples(docs[0], random.Random(0))
    assert [(q, label) for q, _, label in rows] == [("Harbour", 0), ("Harbour", 1), ("Harbour", 2)]
    assert rows[0][1] in {"The harbour is busy.", "Ships wait."}
    assert rows[1][1] == "Harbour after harbour."  # BM25's best: two hits in a short passage
    assert task.queries_of("a")[0].ranked == tuple(task.passages.index(t) for t in (
        "Harbour after harbour.", "The lake froze in winter near a small harbour.",
        "A museum, a school, a church and a harbour are in the old town by the grey sea."))
    assert rows[2][1] in {"Bread is baked daily.", "Snow fell on the hills."}  # not shown in the top 3
    assert task.expanded_queries == 0 and task.build_examples(docs[1], random.Random(0)) == []  # untitled: no query


def test_examples_are_query_then_passage_with_three_labels(tokenizer, rich_document, many_documents):
    task = make(tokenizer)
    task.fit([rich_document, *many_documents[:10]])
    rows = task.triples(rich_document, random.Random(3))
    examples = task.build_examples(rich_document, random.Random(3))
    assert task.num_labels == 3 and [task.label_name(i) for i in range(3)] == ["strong", "weak", "irrelevant"]
    assert [ex["labels"] for ex in examples] == [[label] for _, _, label in rows] == [[0], [1], [2]] * 2
    for (query, passage, _), ex in zip(rows, examples):
        q_ids, p_ids = (e.ids for e in tokenizer.encode_batch([query, passage]))
        segments = split_segments(tokenizer, ex["input_ids"])
        assert segments[0] == q_ids and p_ids[:len(segments[1])] == segments[1]
    assert "relevance: 1 (weak)" in task.describe_example(examples[1])
    assert task.build_examples(rich_document, random.Random(3)) == examples


@pytest.mark.parametrize("docs, found", [
    ([Document("a", "", [Section("", [[Sentence("Text here.")]])])] * 3, "found 0 titled of 3 with text"),
    ([Document("a", "Title", [Section("", [[Sentence("Text here.")]])]), Document("b", "T", [])], "found 1 titled of 1 with text"),
])
def test_a_split_without_titled_documents_is_refused(tokenizer, docs, found):
    with pytest.raises(CorpusError, match=f"^task 'ir_relevance' needs a document with a title and text .*; {found} "):
        make(tokenizer).fit(docs)


def test_rows_of_a_tsv_and_a_jsonl_file_become_the_examples(tokenizer, tmp_path, many_documents):
    tsv = tmp_path / "rel.tsv"
    tsv.write_text("query\tpassage\tlabel\nold museum\tThe old museum opened.\tstrong\n"
                   "old museum\tA museum in Paris.\t1\n\nold museum\tThe lake froze.\tIRRELEVANT\n")
    jsonl = tmp_path / "rel.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [
        {"query": "old museum", "passage": "The old museum opened.", "label": 0},
        {"query": "frozen lake", "passage": "A museum in Paris.", "label": "weak"},
        {"query": "quiet river", "passage": "The lake froze.", "label": "2"}]) + "\n")
    docs = many_documents[:5]
    for path, expected in ((tsv, [0, 1, 2]), (jsonl, [0, 1, 2])):
        task = make(tokenizer, data_file=str(path))
        task.fit(docs)
        rows = [row for doc in docs for row in task.triples(doc, random.Random(0))]
        assert sorted(label for _, _, label in rows) == expected and len(rows) == 3
        assert {passage for _, passage, _ in rows} == {"The old museum opened.", "A museum in Paris.", "The lake froze."}
        examples = [ex for doc in docs for ex in task.build_examples(doc, random.Random(0))]
        assert sorted(ex["labels"][0] for ex in examples) == expected


@pytest.mark.parametrize("name, text, problem", [
    ("bad.tsv", "q\tp\t0\nq\tp\nq\tp\t1\n", r"bad.tsv:2: expected 3 tab-separated columns \(query, passage, label\), found 2"),
    ("bad.tsv", "q\tp\t0\nq\tp\tclicked\n", r"bad.tsv:2: label 'clicked' is not one of 0, 1, 2, strong, weak, irrelevant"),
    ("bad.jsonl", '{"query": "q", "passage": "p", "label": 0}\n{"query": "q", "passage": "p", "label": 3}\n', r"bad.jsonl:2: label 3 "),
    ("bad.jsonl", '{"query": "q", "passage": "p", "label": 0}\n{"query": "q", "passage": \n', r"bad.jsonl:2: not valid JSON"),
    ("bad.jsonl", '{"query": "", "passage": "p", "label": 0}\n', r"bad.jsonl:1: query and passage must be non-empty text"),
])
def test_a_malformed_row_names_the_file_and_line(tokenizer, tmp_path, rich_document, name, text, problem):
    path = tmp_path / name
    path.write_text(text)
    task = make(tokenizer, data_file=str(path))
    with pytest.raises(CorpusError, match=f"^task 'ir_relevance': .*{problem}"):
        task.fit([rich_document])


@pytest.mark.parametrize("options, message", [
    ({"top_k": 0}, "top_k=0 must be an integer >= 1"),
    ({"passage_sentences": "3"}, "passage_sentences='3' must be an integer >= 1"),
    ({"data_file": "rel.csv"}, "data_file='rel.csv' must be a .tsv or .jsonl file"),
    ({"data_file": "/no/such/rel.tsv"}, "data_file '/no/such/rel.tsv' does not exist"),
])
def test_bad_options_are_refused(tokenizer, options, message):
    with pytest.raises(ConfigError, match=f"^task 'ir_relevance': {message}"):
        make(tokenizer, **options)


def test_beyond_one_bucket_weak_passages_come_from_the_querys_bucket(tokenizer, many_documents):
    docs = many_documents[:40]
    whole = make(tokenizer)
    whole.fit(docs)
    bucketed = make(tokenizer, bm25_bucket_chars=5000)  # about 6 documents a bucket
    bucketed.fit(docs)
    assert bucketed.passages == whole.passages  # the same passages, indexed per bucket
    owners = [bucketed.passage_owner(i) for i in range(len(bucketed.passages))]
    # the buckets as runs of documents: a query's ranked passages never leave its bucket
    ends, text = [], 0
    for ordinal, doc in enumerate(docs):
        text += sum(len(bucketed.passages[i]) for i in range(len(bucketed.passages)) if owners[i] == ordinal)
        if text >= 5000:
            ends.append(ordinal + 1)
            text = 0
    assert len(ends) > 3
    bucket_of = lambda ordinal: next((b for b, end in enumerate(ends) if ordinal < end), len(ends))  # noqa: E731
    differs = 0
    for ordinal, doc in enumerate(docs):
        for query, reference in zip(bucketed.queries_of(doc.id), whole.queries_of(doc.id)):
            assert query.passages == reference.passages and query.ranked
            assert {bucket_of(int(owners[i])) for i in query.ranked} == {bucket_of(ordinal)}
            differs += query.ranked != reference.ranked
    assert differs > 0  # the whole-split ranking does reach into other buckets: the test can tell


def test_buckets_ranked_by_worker_processes_give_the_rankings_of_a_serial_fit(tokenizer, many_documents):
    from ernie_cl.corpus.workers import use_workers

    docs = many_documents[:40]
    serial = make(tokenizer, bm25_bucket_chars=5000)
    serial.fit(docs)
    parallel = make(tokenizer, bm25_bucket_chars=5000)
    with use_workers(2):  # as inside `prepare --workers 2`: the buckets go to forked workers
        parallel.fit(docs)
    assert [parallel.queries_of(d.id) for d in docs] == [serial.queries_of(d.id) for d in docs]
    assert parallel.expanded_queries == serial.expanded_queries and serial.num_queries > 20
    assert [parallel.build_examples(d, random.Random(1)) for d in docs] == [serial.build_examples(d, random.Random(1)) for d in docs]


words = st.lists(st.sampled_from(VOCAB[:6] + ["the", "of", "A", "x", "Über", "naïve", "b2b", "snake_case", "42", "THE"]),
                 max_size=8).map(" ".join)


@given(st.lists(words, min_size=1, max_size=12), words)
@SETTINGS
def test_the_rankers_terms_and_index_are_bm25s_own(passages, query):
    from pretrain_tasks.ir_relevance import Bm25Ranker

    passages = [f"{VOCAB[0]} {p}" for p in passages]  # bm25s cannot index a corpus without a term
    ranker = Bm25Ranker(passages)
    assert ranker.terms(passages + [query]) == bm25s.tokenize(passages + [query], stopwords="en", show_progress=False,
                                                              return_ids=False)
    reference = bm25s.BM25()
    reference.index(bm25s.tokenize(passages, stopwords="en", show_progress=False), show_progress=False)
    assert ranker.retriever.vocab_dict == reference.vocab_dict
    ids = reference.get_tokens_ids(ranker.terms([query])[0])
    if ids:
        assert np.array_equal(ranker.retriever.get_scores_from_ids(ids), reference.get_scores_from_ids(ids))


@given(st.lists(st.sampled_from(VOCAB[:3]), min_size=1, max_size=3).map(" ".join), st.integers(1, 5), st.integers(0, 30))
@SETTINGS
def test_the_top_k_cut_ranks_as_a_full_sort_with_ties_to_the_lower_index(query, k, seed):
    from pretrain_tasks.ir_relevance import Bm25Ranker

    rng = random.Random(seed)  # few words over many passages: many equal scores
    passages = [" ".join(rng.choices(VOCAB[:4], k=rng.randint(1, 3))) for _ in range(40)]
    exclude = range(rng.randrange(40), 40)[:rng.randrange(5)]
    scores = bm25_scores(passages, query).astype(np.float64)
    scores[exclude.start:exclude.stop] = 0.0
    full = [i for i in sorted(range(40), key=lambda i: (-scores[i], i)) if scores[i] > 0][:k]
    assert Bm25Ranker(passages).rank(query.split(), exclude, k) == full
