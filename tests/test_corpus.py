"""Corpus loading: bundled wiki + Lee parse, span correctness, readers, split, cache, errors."""

from __future__ import annotations

import bz2
import json
import re
import sys
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ernie_cl.corpus import Corpus, load_corpus, split_heldout
from ernie_cl.corpus.document import Document, Section, Sentence
from ernie_cl.corpus.readers import bundled_paths
from ernie_cl.corpus.sentences import collapse_whitespace, split_sentences
from ernie_cl.corpus.wiki import BOILERPLATE_SECTIONS, wikitext_to_sections
from ernie_cl.errors import CorpusError

MARKUP = re.compile(
    r"\[\[|\]\]|\{\{|\}\}|<ref|''|\{\||\|\}|==|&lt;|&gt;|&amp;|&nbsp;|&quot;"
    r"|</?(?:ref|div|span|small|br|sup|sub|blockquote|center|table|math|gallery)\b|__[A-Z]+__"
)
BUNDLED_WIKI_ARTICLES = 106  # 206 pages - 99 redirects in namespace 0 - 1 redirect in namespace 4
BUNDLED_LEE_DOCUMENTS = 300


@pytest.fixture(scope="module")
def bundled_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus_cache")


@pytest.fixture(scope="module")
def bundled(bundled_cache: Path) -> Corpus:
    return load_corpus(cache_dir=bundled_cache, show_progress=False)


def _by_title(corpus: Corpus, title: str) -> Document:
    return next(doc for doc in corpus.documents if doc.title == title)


def _entity_texts(sentence: Sentence) -> list[str]:
    return [sentence.text[a:b] for a, b in sentence.entities]


def _redirect_titles(dump: Path) -> set[str]:
    titles = set()
    with bz2.open(dump) as stream:
        for _, elem in ET.iterparse(stream):
            if elem.tag.endswith("}page"):
                if elem.find("{*}redirect") is not None:
                    titles.add(elem.find("{*}title").text)
                elem.clear()
    return titles


# --- the bundled corpus ----------------------------------------------------------------------
def test_bundled_corpus_has_every_article_and_lee_document_and_no_redirect(bundled: Corpus) -> None:
    wiki_docs = [d for d in bundled.documents if d.id.startswith("enwiki:")]
    lee_docs = [d for d in bundled.documents if d.id.startswith("lee_background:")]
    assert len(wiki_docs) == BUNDLED_WIKI_ARTICLES
    assert len(lee_docs) == BUNDLED_LEE_DOCUMENTS
    assert len(bundled.documents) == bundled.stats["documents"] == 406
    assert bundled.stats["redirects_dropped"] == 99
    redirects = _redirect_titles(bundled_paths()[0])
    assert len(redirects) == 100 and "AccessibleComputing" in redirects
    assert not redirects & {d.title for d in wiki_docs}
    assert lee_docs[0].id == "lee_background:0001" and lee_docs[0].title == ""
    assert lee_docs[0].num_sentences() > 3
    assert bundled.stats["sentences"] == sum(d.num_sentences() for d in bundled.documents)


def test_wiki_titles_and_section_headings_survive(bundled: Corpus) -> None:
    anarchism = _by_title(bundled, "Anarchism")
    headings = [s.heading for s in anarchism.sections]
    assert headings[0] == ""  # the lead
    # "History" has only a template and subsections of its own: kept as part of the outline
    assert {"History", "Origins", "Anarchist schools of thought", "Criticisms"} <= set(headings)
    assert {"Albedo", "Alabama", "Abraham Lincoln", "Algorithm"} <= {d.title for d in bundled.documents}
    for doc in bundled.documents:
        assert not {s.heading.lower() for s in doc.sections} & BOILERPLATE_SECTIONS, doc.title


def test_wiki_links_become_entity_spans_with_piped_anchor_text(bundled: Corpus) -> None:
    first = next(_by_title(bundled, "Anarchism").sentences())
    assert first.text.startswith("Anarchism is a political philosophy that advocates self-governed")
    assert _entity_texts(first) == ["political philosophy", "self-governed"]
    assert bundled.stats["entities"] > 15000


def test_no_wiki_markup_left_in_any_sentence(bundled: Corpus) -> None:
    offenders = [s.text for d in bundled.documents for s in d.sentences() if MARKUP.search(s.text)]
    assert offenders == []
    assert all(s.text == s.text.strip() and "  " not in s.text and "\n" not in s.text
               for d in bundled.documents for s in d.sentences())


def test_every_span_is_inside_its_sentence_and_trimmed(bundled: Corpus) -> None:
    for doc in bundled.documents:
        for sent in doc.sentences():
            for a, b in sent.entities + sent.phrases:
                assert 0 <= a < b <= len(sent.text)
                assert sent.text[a:b] == sent.text[a:b].strip()


def test_phrase_spans_cover_real_multiword_collocations(bundled: Corpus) -> None:
    found = [s.text[a:b] for d in bundled.documents for s in d.sentences() for a, b in s.phrases]
    lowered = {p.lower() for p in found}
    assert bundled.stats["phrases"] == len(found) > 5000
    assert {"united states", "new york", "prime minister", "alkali metals"} <= lowered
    assert all(len(re.findall(r"\w+", p)) >= 2 for p in found)
    assert not {"it is", "such as", "has been"} & lowered  # stop-word-only pairs are discarded


def test_heldout_split_is_deterministic_disjoint_and_by_document(bundled: Corpus) -> None:
    train_ids = [d.id for d in bundled.train]
    heldout_ids = [d.id for d in bundled.heldout]
    assert heldout_ids and train_ids
    assert not set(train_ids) & set(heldout_ids)
    assert sorted(train_ids + heldout_ids) == sorted(d.id for d in bundled.documents)
    assert 0.02 < len(heldout_ids) / len(bundled.documents) < 0.10  # eval_fraction=0.05
    again_train, again_heldout = split_heldout(list(reversed(bundled.documents)), 0.05)
    assert sorted(d.id for d in again_heldout) == sorted(heldout_ids)
    assert bundled.stats["heldout_documents"] == len(heldout_ids)


def test_second_load_reuses_the_arrow_cache(bundled: Corpus, bundled_cache: Path) -> None:
    start = time.perf_counter()
    again = load_corpus(cache_dir=bundled_cache, show_progress=False)
    elapsed = time.perf_counter() - start
    assert not bundled.from_cache and again.from_cache
    assert again.documents == bundled.documents
    assert again.fingerprint == bundled.fingerprint and re.fullmatch(r"[0-9a-f]{64}", again.fingerprint)
    assert again.stats == bundled.stats
    assert [d.id for d in again.heldout] == [d.id for d in bundled.heldout]
    assert elapsed < 5.0
    assert (again.cache_path / "corpus_meta.json").is_file()
    # exactly one cache folder and no leftover temp folders
    assert [p.name for p in (bundled_cache / "corpus").iterdir()] == [again.cache_path.name]
    other_split = load_corpus(cache_dir=bundled_cache, eval_fraction=0.2, show_progress=False)
    assert other_split.from_cache and other_split.fingerprint != bundled.fingerprint
    assert len(other_split.heldout) > len(bundled.heldout)


# --- wiki markup rules (small, exact) --------------------------------------------------------
WIKITEXT = """{{Infobox thing|name=X}}
'''Foo''' is a [[dog]]s' friend and a [[self-governance|self-governed]] ''bar''.<ref>Cite {{cite web|url=x}}</ref> Next.

[[File:x.jpg|thumb|A caption with [[Link]]]]
* item [[one]]
* item two
{| class="wikitable"
|a||b
|}
<!-- hidden --> See [[Foo (bar)|]] and [http://example.com the site] at http://bare.example.com.

== History ==
Old [[de:Geschichte]] text [[Category:Things]] here.

== References ==
{{reflist}}
=== Sub of references ===
Dropped too.
== Legacy ==
Kept.
"""


def test_wikitext_flattening_rules() -> None:
    sections = wikitext_to_sections(WIKITEXT)
    assert [s.heading for s in sections] == ["", "History", "Legacy"]
    lead = sections[0]
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", lead.text) if p.strip()]
    assert paragraphs == [
        "Foo is a dogs' friend and a self-governed bar. Next.",
        "item one", "item two",
        "See Foo and the site at .",
    ]
    # link trail: lowercase letters after ]] belong to the anchor (as MediaWiki renders it)
    assert [lead.text[a:b] for a, b in lead.entities] == ["dogs", "self-governed", "one", "Foo"]
    assert " ".join(sections[1].text.split()) == "Old text here."


def test_collapse_whitespace_and_sentence_split_remap_spans() -> None:
    text, spans = collapse_whitespace("  The  Big\nDog   barks. It  ran. ", [(2, 11), (5, 22)])
    assert text == "The Big Dog barks. It ran."
    assert [text[a:b] for a, b in spans] == ["The Big", "Big Dog barks"]
    sentences = split_sentences(text, spans + [(15, 24)])  # the last one crosses a boundary
    assert [s.text for s in sentences] == ["The Big Dog barks.", "It ran."]
    assert [_entity_texts(s) for s in sentences] == [["The Big", "Big Dog barks"], []]


def _write_dump(path: Path, pages: list[tuple[str, int, str, bool]]) -> None:
    body = "".join(
        f"<page><title>{title}</title><ns>{ns}</ns><id>{i}</id>"
        + ('<redirect title="X" />' if redirect else "")
        + f"<revision><id>1</id><text xml:space=\"preserve\">{text}</text></revision></page>"
        for i, (title, ns, text, redirect) in enumerate(pages, start=1)
    )
    xml = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><siteinfo><dbname>testwiki'
           f"</dbname></siteinfo>{body}</mediawiki>")
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "wt", encoding="utf-8") as stream:
        stream.write(xml)


def test_wiki_source_reads_any_dump_and_skips_redirects_and_other_namespaces(tmp_path: Path) -> None:
    dump = tmp_path / "tiny.xml.bz2"
    _write_dump(dump, [
        ("Cat", 0, "A '''cat''' is a [[mammal]]. It purrs &lt;ref&gt;x&lt;/ref&gt;.", False),
        ("Kitty", 0, "#REDIRECT [[Cat]]", True),
        ("Talk:Cat", 1, "Discussion of the cat article.", False),
        ("Stub", 0, "{{stub}}", False),
    ])
    corpus = load_corpus("wiki", dump, cache_dir=tmp_path / "cache", phrases=False, show_progress=False)
    assert [(d.id, d.title) for d in corpus.documents] == [("testwiki:1", "Cat")]
    sentences = list(corpus.documents[0].sentences())
    assert [s.text for s in sentences] == ["A cat is a mammal.", "It purrs ."]
    assert _entity_texts(sentences[0]) == ["mammal"]
    assert corpus.stats["redirects_dropped"] == 1
    assert corpus.stats["pages_other_namespace_dropped"] == 1
    assert corpus.stats["empty_documents_dropped"] == 1  # "Stub" has no text once templates go
    assert corpus.heldout == [] and corpus.train == corpus.documents  # one document: no split


def test_broken_wiki_dump_is_a_one_line_corpus_error(tmp_path: Path) -> None:
    dump = tmp_path / "broken.xml"
    dump.write_text("<mediawiki><page><title>A</title>", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"broken\.xml' is not valid XML") as err:
        load_corpus("wiki", dump, cache_dir=tmp_path / "cache", show_progress=False)
    assert "\n" not in str(err.value)


# --- flat readers ------------------------------------------------------------------------------
def test_txt_folder_reader_splits_paragraphs_and_counts_invalid_utf8(tmp_path: Path) -> None:
    folder = tmp_path / "txt"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("First para. Two sentences.\n\n  \nSecond\n  para  here.\n",
                                  encoding="utf-8")
    # two invalid sequences (3 bytes -> 3 replacement characters) and one genuine U+FFFD
    (folder / "sub" / "a.txt").write_bytes(
        b"The caf\xe9 opened. Bad \xff\xfe bytes.\n\nreal \xef\xbf\xbd stays.")
    (folder / "empty.txt").write_text(" \n\n ", encoding="utf-8")
    (folder / "ignored.md").write_text("Not a txt file.", encoding="utf-8")
    corpus = load_corpus("txt", folder, cache_dir=tmp_path / "cache", phrases=False, show_progress=False)
    assert [(d.id, d.title) for d in corpus.documents] == [("b.txt", "b"), ("sub/a.txt", "a")]
    paragraphs = [[s.text for s in p] for p in corpus.documents[0].paragraphs()]
    assert paragraphs == [["First para.", "Two sentences."], ["Second para here."]]
    assert [s.text for s in corpus.documents[1].sentences()] == [
        "The caf\ufffd opened.", "Bad \ufffd\ufffd bytes.", "real \ufffd stays."]
    assert corpus.stats["invalid_utf8_replaced"] == 3  # the genuine U+FFFD is not counted
    assert corpus.stats["invalid_utf8_documents"] == 1
    assert corpus.stats["empty_documents_dropped"] == 1
    assert len(corpus.train) == 1 and len(corpus.heldout) == 1  # two documents: both sides non-empty


def test_fingerprint_follows_source_bytes_and_options(tmp_path: Path) -> None:
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "a.txt").write_text("Alpha beta. Gamma delta.", encoding="utf-8")
    (folder / "b.txt").write_text("Epsilon zeta.", encoding="utf-8")
    cache = tmp_path / "cache"
    first = load_corpus("txt", folder, cache_dir=cache, show_progress=False)
    assert load_corpus("txt", folder, cache_dir=cache, show_progress=False).from_cache
    lower_count = load_corpus("txt", folder, cache_dir=cache, phrase_min_count=2, show_progress=False)
    assert not lower_count.from_cache and lower_count.fingerprint != first.fingerprint
    (folder / "b.txt").write_text("Epsilon eta.", encoding="utf-8")
    edited = load_corpus("txt", folder, cache_dir=cache, show_progress=False)
    assert not edited.from_cache and edited.fingerprint != first.fingerprint
    assert [s.text for s in edited.documents[1].sentences()] == ["Epsilon eta."]
    limited = load_corpus("txt", folder, cache_dir=cache, max_documents=1, show_progress=False)
    assert [d.id for d in limited.documents] == ["a.txt"] and limited.fingerprint != edited.fingerprint


def test_jsonl_reader_maps_entity_char_spans_into_sentences(tmp_path: Path) -> None:
    text = "Marie Curie won.  She lived in Paris.\n\nThe Nobel Prize followed."
    records = [
        {"title": "Curie", "text": text,
         "entities": [[0, 11], [31, 36], [43, 54], [6, 20]]},  # the last crosses a sentence boundary
        {"id": "doc-b", "title": "B", "text": "Short one."},
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    corpus = load_corpus("jsonl", path, cache_dir=tmp_path / "cache", phrases=False, show_progress=False)
    curie = corpus.documents[0]
    assert (curie.id, curie.title) == ("1", "Curie")
    assert [[(s.text, _entity_texts(s)) for s in p] for p in curie.paragraphs()] == [
        [("Marie Curie won.", ["Marie Curie"]), ("She lived in Paris.", ["Paris"])],
        [("The Nobel Prize followed.", ["Nobel Prize"])],
    ]
    assert corpus.documents[1].id == "doc-b"


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"title": "A", "text": "Fine."}\n{"title": "B", "text": \n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad\.jsonl line 2 is not valid JSON") as err:
        load_corpus("jsonl", path, cache_dir=tmp_path / "cache", show_progress=False)
    assert "\n" not in str(err.value)
    path.write_text('{"title": "A", "text": "Fine.", "entities": [[3, 99]]}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad\.jsonl line 1: entity span \[3, 99\]"):
        load_corpus("jsonl", path, cache_dir=tmp_path / "cache", show_progress=False)


def test_hf_dataset_saved_on_disk(tmp_path: Path) -> None:
    import datasets

    rows = {"headline": ["One", "Two"], "body": ["First doc. It has two sentences.", "Second doc."]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "ds"))
    corpus = load_corpus("hf", tmp_path / "ds", cache_dir=tmp_path / "cache", text_field="body",
                         title_field="headline", phrases=False, show_progress=False)
    assert [(d.id, d.title, d.num_sentences()) for d in corpus.documents] == [
        ("0", "One", 2), ("1", "Two", 1)]
    with pytest.raises(CorpusError, match=r"has no split 'test'; available: train"):
        load_corpus("hf", tmp_path / "ds", cache_dir=tmp_path / "cache", split="test", show_progress=False)
    with pytest.raises(CorpusError, match=r"no column 'text' \(columns: body, headline\)"):
        load_corpus("hf", tmp_path / "ds", cache_dir=tmp_path / "cache", show_progress=False)


def test_hf_hub_failure_is_wrapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CorpusError, match=r"cannot load Hugging Face dataset 'someone/data' split "
                                          r"'train' \(no network\)") as err:
        load_corpus("hf", "someone/data", cache_dir=tmp_path / "cache", show_progress=False)
    assert "\n" not in str(err.value)


# --- user errors -------------------------------------------------------------------------------
def test_missing_path_is_a_corpus_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for source in ("txt", "jsonl", "wiki", "hf"):
        with pytest.raises(CorpusError, match=rf"^corpus path '{re.escape(str(missing))}' does not exist; "):
            load_corpus(source, missing, cache_dir=tmp_path / "cache", show_progress=False)
    with pytest.raises(CorpusError, match=r"source 'txt' needs a path"):
        load_corpus("txt", None, cache_dir=tmp_path / "cache")
    with pytest.raises(CorpusError, match=r"unknown corpus source 'pdf'; use one of: bundled, wiki"):
        load_corpus("pdf", tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(CorpusError, match=r"eval_fraction=1.5 is out of range"):
        load_corpus("txt", tmp_path, cache_dir=tmp_path / "cache", eval_fraction=1.5)


def test_empty_corpus_is_a_corpus_error(tmp_path: Path) -> None:
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "blank.txt").write_text("\n\n   \n", encoding="utf-8")
    (folder / "punct.txt").write_text("... --- !!!", encoding="utf-8")  # no word: no sentence
    with pytest.raises(CorpusError, match=r"is empty: no document has any text; add documents") as err:
        load_corpus("txt", folder, cache_dir=tmp_path / "cache", show_progress=False)
    assert str(folder) in str(err.value)
    assert not (tmp_path / "cache" / "corpus").exists() or not any((tmp_path / "cache" / "corpus").iterdir())


def test_spacy_model_requires_spacy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "Ada Lovelace wrote notes in London."}\n', encoding="utf-8")
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError
    with pytest.raises(CorpusError, match=r"needs spaCy, which is not installed; run `pip install spacy "
                                          r"&& python -m spacy download en_core_web_sm`"):
        load_corpus("jsonl", path, cache_dir=tmp_path / "cache", spacy_model="en_core_web_sm")


def test_spacy_entities_are_added_without_overlapping_given_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeNlp:
        def pipe(self, texts, batch_size=256):  # noqa: ANN001, ANN202 - spaCy's duck type
            for text in texts:
                ents = [types.SimpleNamespace(start_char=m.start(), end_char=m.end())
                        for m in re.finditer(r"Ada Lovelace|London|Lovelace wrote", text)]
                yield types.SimpleNamespace(ents=ents)

    fake = types.ModuleType("spacy")
    fake.Language = type("Language", (), {})  # datasets checks spacy.Language when hashing
    def fake_load(name: str, disable: tuple = ()) -> FakeNlp:
        if name != "fake_model":
            raise OSError(f"[E050] Can't find model '{name}'")
        return FakeNlp()

    fake.load = fake_load
    monkeypatch.setitem(sys.modules, "spacy", fake)
    path = tmp_path / "d.jsonl"
    line = '{"text": "Ada Lovelace wrote notes in London.", "entities": [[0, 3]]}\n'
    path.write_text(line, encoding="utf-8")
    corpus = load_corpus("jsonl", path, cache_dir=tmp_path / "cache", spacy_model="fake_model",
                         phrases=False, show_progress=False)
    sentence = next(corpus.documents[0].sentences())
    assert _entity_texts(sentence) == ["Ada", "London"]  # overlapping NER spans lose to given ones
    assert corpus.stats["spacy_entities"] == 1
    with pytest.raises(CorpusError, match=r"spaCy model 'missing_model' is not installed"):
        load_corpus("jsonl", path, cache_dir=tmp_path / "cache", spacy_model="missing_model")


def test_split_puts_one_document_on_each_side_when_the_hash_would_not(tmp_path: Path) -> None:
    docs = [Document(id=f"d{i}", title="", sections=[Section("", [[Sentence("x.")]])]) for i in range(5)]
    train, heldout = split_heldout(docs, 0.0)
    assert len(heldout) == 1 and len(train) == 4
    train, heldout = split_heldout(docs, 0.999999)
    assert len(heldout) == 4 and len(train) == 1
    assert split_heldout(docs, 0.5) == split_heldout(docs, 0.5)


@given(st.text(alphabet=["a", "b", "é", " ", "\n", "\t", "\u00a0", "\u2003"], max_size=14), st.data())
@settings(max_examples=400, deadline=None)
def test_collapsing_text_that_is_already_collapsed_takes_the_short_way_with_the_same_result(text, data):
    from ernie_cl.corpus import sentences

    spans = []
    for _ in range(data.draw(st.integers(0, 3))):
        a = data.draw(st.integers(0, len(text)))
        spans.append((a, data.draw(st.integers(a, len(text)))))
    segments = [(m.start(), m.end()) for m in sentences._NON_SPACE.finditer(text)]
    assert sentences.collapse_whitespace(text, spans) == sentences._rebuild(text, segments, " ", spans)


# --- phrases: our counting and matching give gensim's results --------------------------------------

PHRASE_WORDS = ["new", "york", "city", "of", "the", "bank", "america", "is", "and", "a", "big", "apple", "in", "it"]


def _gensim_spans(frozen, text: str) -> list[tuple[int, int]]:
    """The reference: gensim's own ``analyze_sentence`` over the words, stop-word-only phrases dropped."""
    from gensim.parsing.preprocessing import STOPWORDS

    from ernie_cl.corpus.phrases import word_spans

    spans = word_spans(text)
    tokens = [text[a:b].lower() for a, b in spans]
    found, index = [], 0
    for item, score in frozen.analyze_sentence(tokens):
        length = item.count(frozen.delimiter) + 1 if score is not None else 1
        if score is not None and not all(w in STOPWORDS for w in item.split(frozen.delimiter)):
            found.append((spans[index][0], spans[index + length - 1][1]))
        index += length
    return found


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(PHRASE_WORDS + ["New", "York", "It"]), min_size=0, max_size=14),
                min_size=1, max_size=60), st.integers(1, 3))
def test_phrase_counts_and_spans_are_gensims(sentences, min_count):
    """Counting batch by batch with ``count_words`` gives gensim's ``add_vocab`` counts, and
    ``PhraseMatcher`` the spans of gensim's ``analyze_sentence``, on sentences full of connector
    words and repeated candidates (the cases where the greedy rule matters)."""
    from gensim.models.phrases import ENGLISH_CONNECTOR_WORDS, Phrases

    from ernie_cl.corpus.phrases import PhraseCounter, PhraseMatcher

    texts = [" ".join(words) + "." for words in sentences]
    documents = [Document(f"d{i}", "t", [Section("", [[Sentence(t)]])]) for i, t in enumerate(texts)]
    counter = PhraseCounter(min_count, 0.5)
    for document in documents[: len(documents) // 2]:  # two batches, merged as gensim merges them
        counter.add(document)
    counter._count()
    for document in documents[len(documents) // 2 :]:
        counter.add(document)
    reference = Phrases(min_count=min_count, threshold=0.5, connector_words=ENGLISH_CONNECTOR_WORDS)
    lowered = [[w.lower() for w in words] for words in sentences]
    reference.add_vocab(lowered[: len(documents) // 2])
    reference.add_vocab(lowered[len(documents) // 2 :])
    counts = counter.counts()
    assert counts[0] == reference.vocab and counts[1] == reference.corpus_word_count
    frozen = reference.freeze()
    matcher = PhraseMatcher(frozen)
    for text in texts:
        assert matcher.spans(text) == _gensim_spans(frozen, text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list("aZ9 '.,-/_İßÉé’") + ["New York", "U.S.", "1,000"]), max_size=30))
def test_lowered_words_are_the_words_lowercased(pieces):
    from ernie_cl.corpus.phrases import _WORD, lowered_words

    text = "".join(pieces)
    assert lowered_words(text) == [w.lower() for w in _WORD.findall(text)]
