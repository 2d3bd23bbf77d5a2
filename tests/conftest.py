"""Shared fixtures for the pre-training task tests: a tiny generated English corpus with entity and
phrase spans, WordPiece tokenizers trained on it (uncased and cased), and hand-made Documents."""

from __future__ import annotations

import random
from typing import Callable

import pytest

from ernie_cl.corpus.document import Document, Section, Sentence
from ernie_cl.data.tokenizer import TextTokenizer, train_wordpiece

PERSONS = ["Barack Obama", "Angela Merkel", "Marie Curie", "Ada Lovelace", "Alan Turing", "Nelson Mandela",
           "Charles Darwin", "Jane Austen", "Frida Kahlo", "Isaac Newton", "Rosa Parks", "Leo Tolstoy"]
PLACES = ["Paris", "London", "New York", "Berlin", "South Africa", "the United States", "Mexico City",
          "Tokyo", "Cairo", "Buenos Aires", "Quebec", "Vienna"]
ORGS = ["the Red Cross", "Google", "the United Nations", "Oxford University", "the World Bank", "Amazon"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
VERBS = ["visited", "left", "described", "praised", "studied", "remembered", "painted", "explored",
         "crossed", "built", "defended", "criticized", "photographed", "admired"]
OBJECTS = ["the old museum", "a small garden", "the new bridge", "a long letter", "the quiet river",
           "a famous painting", "the busy harbour", "an empty school", "the frozen lake", "a strange machine",
           "the royal palace", "a wooden boat", "the public library", "a narrow street"]
OPENERS = ["However,", "Later,", "Because of this,", "In the end,", "Meanwhile,", "Surprisingly,", "Yesterday,"]


def build_sentence(pieces: list[tuple[str, str | None]]) -> Sentence:
    """Join (text, tag) pieces with spaces (no space before '.' or ','); tag 'ent' or 'phr' records
    the piece as an entity or phrase span."""
    text, entities, phrases = "", [], []
    for piece, tag in pieces:
        if text and piece not in {".", ","}:
            text += " "
        start = len(text)
        text += piece
        if tag == "ent":
            entities.append((start, len(text)))
        elif tag == "phr":
            phrases.append((start, len(text)))
    return Sentence(text, entities=entities, phrases=phrases)


def random_sentence(rng: random.Random) -> Sentence:
    person, place, org = rng.choice(PERSONS), rng.choice(PLACES), rng.choice(ORGS)
    templates = [
        [(person, "ent"), (rng.choice(VERBS), None), (place, "ent"), ("in", None), (rng.choice(MONTHS), None), (".", None)],
        [(rng.choice(OPENERS), None), (person, "ent"), (rng.choice(VERBS), None), (rng.choice(OBJECTS), "phr"), (".", None)],
        [("In", None), (str(rng.randint(1900, 2020)), None), (",", None), (org, "ent"), ("opened", None),
         (rng.choice(OBJECTS), "phr"), ("near", None), (place, "ent"), (".", None)],
        [(str(rng.randint(2, 90)), None), ("people from", None), (place, "ent"), ("wrote to", None), (person, "ent"), (".", None)],
        [("The report of", None), (org, "ent"), (rng.choice(VERBS), None), (rng.choice(OBJECTS), "phr"), ("and", None),
         (rng.choice(OBJECTS), "phr"), (".", None)],
    ]
    return build_sentence(rng.choice(templates))


def random_document(rng: random.Random, doc_id: str, paragraphs: int = 4, sentences: int = 5) -> Document:
    sections = [
        Section(heading, [[random_sentence(rng) for _ in range(sentences)] for _ in range(paragraphs // 2)])
        for heading in ("", "History")
    ]
    return Document(doc_id, f"Document {doc_id}", sections)


@pytest.fixture(scope="session")
def corpus_texts() -> list[str]:
    rng = random.Random(0)
    return [random_sentence(rng).text for _ in range(600)]


@pytest.fixture(scope="session")
def tokenizer(corpus_texts: list[str]) -> TextTokenizer:
    """Uncased WordPiece tokenizer (~500 ids) trained on the generated corpus."""
    return TextTokenizer(train_wordpiece(corpus_texts, vocab_size=500, lowercase=True), fingerprint="x", lowercase=True)


@pytest.fixture(scope="session")
def cased_tokenizer(corpus_texts: list[str]) -> TextTokenizer:
    return TextTokenizer(train_wordpiece(corpus_texts, vocab_size=500, lowercase=False), fingerprint="c", lowercase=False)


@pytest.fixture
def annotated() -> Callable[..., Sentence]:
    """``annotated("Obama visited Paris.", entities=["Obama", "Paris"])``: spans by first occurrence."""

    def make(text: str, entities: tuple[str, ...] = (), phrases: tuple[str, ...] = ()) -> Sentence:
        def spans(parts: tuple[str, ...]) -> list[tuple[int, int]]:
            found = []
            for part in parts:
                start = text.index(part)
                found.append((start, start + len(part)))
            return found

        return Sentence(text, entities=spans(entities), phrases=spans(phrases))

    return make


@pytest.fixture
def rich_document() -> Document:
    """A fresh document with two sections, paragraphs of five sentences, entity and phrase spans."""
    return random_document(random.Random(1), "rich", paragraphs=4, sentences=5)


@pytest.fixture
def many_documents() -> list[Document]:
    """120 generated documents (about 27k tokens at seq_len 64) for masking statistics."""
    rng = random.Random(2)
    return [random_document(rng, f"d{i}", paragraphs=4, sentences=5) for i in range(120)]


def wandb_run_ids(run_dir) -> set[str]:
    """The wandb run ids under a run folder, read from the run files (run-<id>.wandb).

    The folder name is not parsed: wandb appends "-1" to it when two runs start in the same second.
    """
    return {p.stem.removeprefix("run-") for p in (run_dir / "wandb").glob("offline-run-*/run-*.wandb")}


@pytest.fixture(scope="session", autouse=True)
def cpu_kernels_built() -> None:
    """Build ernie-cl's CPU kernels (ernie_cl/kernels/compiled.py) before any test starts a
    training subprocess: the process that builds it prints a one-time notice, which tests that count
    stderr lines would otherwise see in whichever subprocess came first."""
    from ernie_cl.kernels import compiled

    compiled.load()
