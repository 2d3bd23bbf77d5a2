"""The document store: documents stream into Arrow shards and read back exactly, decoded on access."""

from __future__ import annotations

import random

import numpy as np

from conftest import random_document
from ernie_cl.corpus import load_corpus, split_heldout
from ernie_cl.corpus.loader import heldout_mask
from ernie_cl.corpus.document import Document, Section, Sentence
from ernie_cl.corpus.store import OPEN_SHARDS, DocumentStore, StoreWriter, decode_rows, id_hash


def stored(tmp_path, documents, shard_chars):
    writer = StoreWriter(tmp_path / "store", shard_chars=shard_chars)
    for document in documents:
        writer.add(document)
    writer.close()
    return DocumentStore(tmp_path / "store"), writer


def test_documents_stream_into_bounded_shards_and_read_back_exactly(tmp_path):
    rng = random.Random(5)
    documents = [random_document(rng, f"doc{i}") for i in range(50)]
    store, writer = stored(tmp_path, documents, shard_chars=6000)
    assert len(store.shards) > 5 and sum(s["documents"] for s in store.shards) == 50
    view = store.view()
    assert list(view) == documents and view == documents and len(view) == 50
    assert view[17] == documents[17] and view[-1] == documents[-1]
    assert list(view[10:30:3]) == documents[10:30:3]
    picked = store.view(np.array([0, 7, 8, 9, 41]))  # not contiguous: decoded one by one
    assert list(picked) == [documents[i] for i in (0, 7, 8, 9, 41)]
    assert view.char_counts().tolist() == [sum(len(s.text) for s in d.sentences()) for d in documents]
    assert writer.counts["documents"] == 50 and writer.counts["sentences"] == sum(d.num_sentences() for d in documents)
    assert store.hashes.tolist() == [id_hash(d.id) for d in documents]
    assert len(store._tables) <= OPEN_SHARDS  # a pass over the store leaves only the last few mapped
    assert list(reversed(view)) == documents[::-1]  # shards unmapped and mapped again read the same


def irregular_document(rng: random.Random, doc_id: str) -> Document:
    """Any shape the store must keep: sections without paragraphs (an outline heading), spans or
    none, one-sentence paragraphs, a one-section document."""
    def sentence() -> Sentence:
        text = " ".join(rng.choice(["Alpha", "beta", "Gamma", "delta", "é", "x"]) for _ in range(rng.randint(1, 8)))
        spans = lambda: sorted((a, a + rng.randint(1, 3)) for a in rng.sample(range(len(text)), min(len(text), rng.randint(0, 2))))  # noqa: E731
        return Sentence(text, spans(), spans())
    sections = [Section(rng.choice(["", "History", "Ünïcode"]),
                        [[sentence() for _ in range(rng.randint(1, 3))] for _ in range(rng.choice([0, 1, 1, 2, 4]))])
                for _ in range(rng.randint(1, 4))]
    return Document(doc_id, f"Title {doc_id}", sections)


def test_the_columnar_decoder_equals_decoding_row_by_row(tmp_path):
    rng = random.Random(11)
    documents = [irregular_document(rng, f"d{i}") for i in range(120)]
    store, _ = stored(tmp_path, documents, shard_chars=10**9)
    table = store.table(0)
    for start, length in [(0, 120), (0, 1), (37, 20), (119, 1), (50, 0), (1, 118)]:
        rows = table.slice(start, length)
        assert decode_rows(rows) == [Document.from_dict(r) for r in rows.to_pylist()] == documents[start:start + length]
    mostly_a_run = np.array([i for i in range(3, 90) if i % 7])  # a split's view: a run with gaps
    assert list(store.view(mostly_a_run)) == [documents[i] for i in mostly_a_run]


def test_sentence_batches_are_the_views_sentence_texts_in_order(tmp_path):
    rng = random.Random(12)
    documents = [irregular_document(rng, f"d{i}") for i in range(300)]
    store, _ = stored(tmp_path, documents, shard_chars=3000)  # many shards: batches cross them
    assert len(store.shards) > 3
    for indices in (np.arange(300), np.array([i for i in range(300) if i % 5]), np.array([0, 7, 150, 151, 299]),
                    np.arange(40, 41), np.arange(0)):
        texts = [text for batch in store.view(indices).sentence_batches() for text in batch]
        assert texts == [s.text for i in indices for s in documents[i].sentences()]


def test_the_split_from_stored_hashes_is_the_split_of_the_list(tmp_path):
    rng = random.Random(6)
    documents = [random_document(rng, f"doc{i}") for i in range(200)]
    store, _ = stored(tmp_path, documents, shard_chars=20000)
    for fraction in (0.0, 0.1, 0.5, 0.999999):
        mask = heldout_mask(store.hashes, fraction)
        train, heldout = split_heldout(documents, fraction)
        assert [documents[i] for i in np.nonzero(~mask)[0]] == train
        assert [documents[i] for i in np.nonzero(mask)[0]] == heldout and train and heldout


def test_a_loaded_corpus_is_a_view_of_its_store(tmp_path):
    folder = tmp_path / "txt"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.txt").write_text(f"Document {i} starts here. It has two sentences.\n\nAnd a second paragraph.\n")
    corpus = load_corpus("txt", folder, cache_dir=tmp_path / "cache", eval_fraction=0.3, show_progress=False)
    again = load_corpus("txt", folder, cache_dir=tmp_path / "cache", eval_fraction=0.3, show_progress=False)
    assert again.from_cache and not corpus.from_cache
    assert list(again.documents) == list(corpus.documents) and len(corpus.documents) == 6
    assert (list(corpus.train), list(corpus.heldout)) == split_heldout(list(corpus.documents), 0.3)
    assert corpus.stats["documents"] == 6 and corpus.stats["paragraphs"] == 12
    assert not list(corpus.cache_path.parent.glob(".*tmp*"))  # the staging folder is gone


def test_parsing_in_two_workers_gives_the_store_of_one(tmp_path, monkeypatch):
    import ernie_cl.corpus.parts as parts

    monkeypatch.setattr(parts, "PART_BYTES", 20_000)  # the bundled corpus in about 80 parts
    one = load_corpus("bundled", cache_dir=tmp_path / "one", eval_fraction=0.1, show_progress=False, workers=1)
    two = load_corpus("bundled", cache_dir=tmp_path / "two", eval_fraction=0.1, show_progress=False, workers=2)
    assert len(two.documents.store.shards) > 50
    assert list(one.documents) == list(two.documents) and one.stats == two.stats
    assert one.stats["phrases"] > 1000 and one.stats["long_sentences_cut"] == two.stats["long_sentences_cut"]
    capped = load_corpus("bundled", cache_dir=tmp_path / "capped", eval_fraction=0.1, show_progress=False,
                         workers=2, max_documents=50)
    assert [d.id for d in capped.documents] == [d.id for d in one.documents][:50]
