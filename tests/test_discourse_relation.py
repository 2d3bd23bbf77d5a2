"""discourse_relation: the marker that begins s2 is stripped and becomes the label (longest whole-word
match, comma rule), the label space is fixed by the options, rare labels are dropped and reported,
[no-conn] pairs are sampled to the asked share, and a corpus without markers is refused."""

from __future__ import annotations

import logging
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ernie_cl.corpus.document import Document, Section, Sentence
from ernie_cl.errors import ConfigError, CorpusError
from pretrain_tasks import get_task_class
from pretrain_tasks._segments import split_segments
from pretrain_tasks.discourse_relation import NO_CONN, Marker, MarkerMatcher, discovery_markers, marker_groups

MARKERS = discovery_markers()
MARKER_FIRST_WORDS = {m.text.split()[0] for m in MARKERS}
# Plain words that begin no marker, so a generated rest never extends the marker it follows.
WORDS = [w for w in ["paris", "river", "museum", "letter", "the", "a", "garden", "bridge", "visited", "quiet", "old",
                     "machine", "crossed", "harbour", "painted", "it", "we", "people", "wrote", "seven"] if w not in MARKER_FIRST_WORDS]
QUICK = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

rest_words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join)


def random_case(draw, text: str) -> str:
    return "".join(ch.upper() if draw(st.booleans()) else ch for ch in text)


def pair_document(pairs: list[tuple[str, str]], doc_id: str = "d") -> Document:
    """One paragraph per (s1, s2) pair, so exactly these pairs are adjacent."""
    return Document(doc_id, "T", [Section("", [[Sentence(a), Sentence(b)] for a, b in pairs])])


def make(tokenizer, **options):
    return get_task_class("discourse_relation")(tokenizer, 128, options)


@st.composite
def marked_sentence(draw):
    marker = draw(st.sampled_from(MARKERS))
    spelled = random_case(draw, marker.text.replace(" ", draw(st.sampled_from([" ", "  "]))))
    comma = "," if marker.needs_comma or draw(st.booleans()) else ""
    rest = draw(rest_words)
    return marker, f"{spelled}{comma} {rest}.", rest + "."


@given(marked_sentence())
@QUICK
def test_the_stripped_marker_is_the_label_and_no_longer_begins_s2(case):
    marker, sentence, rest = case
    found, stripped = MarkerMatcher(MARKERS).strip(sentence)
    assert found == marker
    expected = rest[0].upper() + rest[1:] if sentence[0].isupper() else rest
    assert stripped == expected
    assert MarkerMatcher(MARKERS).strip(stripped) == (None, stripped)  # nothing of the marker is left


@given(st.sampled_from([m for m in MARKERS if m.needs_comma]), rest_words)
@QUICK
def test_a_comma_marker_without_its_comma_makes_the_pair_unusable(marker, rest):
    sentence = f"{marker.text.capitalize()} {rest}."
    assert MarkerMatcher(MARKERS).strip(sentence) == (marker, None)


@given(st.sampled_from(MARKERS), rest_words)
@QUICK
def test_markers_match_whole_words_only(marker, rest):
    sentence = f"{marker.text}qz, {rest}."  # the marker's letters run on into another word
    assert MarkerMatcher(MARKERS).strip(sentence) == (None, sentence)


NESTED = [Marker.parse(s) for s in ("as", "as_a_result,", "in", "in_the_end,", "in_the_end_of_all,")]


@given(st.sampled_from(NESTED), rest_words)
@QUICK
def test_the_longest_marker_wins(marker, rest):
    matcher = MarkerMatcher(NESTED)
    assert matcher.strip(f"{marker.text.title()}, {rest}.") == (marker, rest.capitalize() + ".")
    # The longest marker decides even when it breaks its comma rule and a shorter one would fit.
    assert matcher.strip("As a result the river rose.") == (Marker("as a result", True), None)


def test_markers_are_case_insensitive_and_keep_a_cased_input_capitalised():
    matcher = MarkerMatcher(MARKERS)
    assert matcher.strip("AS A RESULT, the river rose.") == (Marker("as a result", True), "The river rose.")
    assert matcher.strip("however , it rained.") == (Marker("however", False), "it rained.")
    assert matcher.strip("So.") == (Marker("so", True), None)  # nothing left after the marker


def test_every_discovery_marker_has_exactly_one_coarse_group():
    assert len(MARKERS) == 173 and len({m.text for m in MARKERS}) == 173
    assert set(marker_groups()) == {m.text for m in MARKERS}


def test_the_label_space_is_fixed_by_the_options(tokenizer):
    coarse, full = make(tokenizer), make(tokenizer, labels="full")
    groups = list(dict.fromkeys(marker_groups().values()))
    assert coarse.num_labels == 14 == len(groups) + 1 and coarse.label_name(0) == NO_CONN
    assert [coarse.label_name(i) for i in range(1, 14)] == groups
    assert full.num_labels == 174 and full.label_name(0) == NO_CONN
    assert [full.label_name(i) for i in range(1, 174)] == [m.text for m in MARKERS]


def test_examples_carry_s1_and_the_stripped_s2(tokenizer):
    task = make(tokenizer, labels="full", min_count=1)
    doc = pair_document([("Marie Curie visited Paris.", "However, the museum was closed."),
                         ("Alan Turing built a machine.", "In the end, it worked.")])
    task.fit([doc])
    examples = task.build_examples(doc, random.Random(0))
    assert [task.label_name(ex["labels"][0]) for ex in examples] == ["however", "in the end"]
    ids = [e.ids for e in tokenizer.encode_batch(["Marie Curie visited Paris.", "The museum was closed."])]
    assert split_segments(tokenizer, examples[0]["input_ids"]) == ids
    assert examples[0]["token_type_ids"] == [0] * (len(ids[0]) + 2) + [1] * (len(ids[1]) + 1)
    assert "removed marker: 'however'" in task.describe_example(examples[0])
    coarse = make(tokenizer, min_count=1)
    coarse.fit([doc])
    labels = [coarse.label_name(ex["labels"][0]) for ex in coarse.build_examples(doc, random.Random(0))]
    assert labels == ["contrast", "temporal"]


def test_only_adjacent_sentences_of_one_paragraph_pair_up(tokenizer):
    doc = Document("d", "T", [Section("", [[Sentence("Paris is old.")], [Sentence("However, it grew.")]])])
    task = make(tokenizer, min_count=1)
    with pytest.raises(CorpusError):  # the only marker opens a paragraph: no pair at all
        task.fit([doc])


def test_rare_labels_are_dropped_and_reported_but_keep_their_ids(tokenizer, caplog):
    pairs = [("The river rose.", "However, the bridge held.")] * 6 + [("A letter came.", "For example, it was long.")] * 2
    doc = pair_document(pairs)
    task = make(tokenizer, labels="full", min_count=3, no_conn_ratio=0)
    with caplog.at_level(logging.WARNING, logger="pretrain_tasks.discourse_relation"):
        task.fit([doc])
    assert task.dropped_labels == ["for example"]
    assert task.label_counts == {"however": 6, "for example": 2}
    assert len([r for r in caplog.records if "for example (2)" in r.getMessage()]) == 1
    labels = [ex["labels"][0] for ex in task.build_examples(doc, random.Random(0))]
    assert labels == [1 + [m.text for m in MARKERS].index("however")] * 6
    assert task.num_labels == 174


def test_a_corpus_without_markers_is_refused(tokenizer):
    doc = pair_document([("The river rose.", "The bridge held.")] * 5)
    with pytest.raises(CorpusError, match=r"^task 'discourse_relation' found no adjacent sentence pair whose second sentence "
                                          r"begins with a discourse marker .* in the 1 document\(s\) of this split"):
        make(tokenizer).fit([doc])


def test_a_corpus_where_every_label_is_rare_is_refused(tokenizer):
    doc = pair_document([("The river rose.", "However, the bridge held.")] * 2)
    with pytest.raises(CorpusError, match="no discourse marker label occurs min_count=3 times .*lower min_count"):
        make(tokenizer, min_count=3).fit([doc])


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5])
def test_no_conn_examples_make_the_asked_share(tokenizer, ratio):
    pairs = [("The river rose.", "However, the bridge held.")] * 100 + [("The river rose.", "The bridge held.")] * 900
    docs = [pair_document(pairs[i::10], f"d{i}") for i in range(10)]
    task = make(tokenizer, no_conn_ratio=ratio)
    task.fit(docs)
    labels = [ex["labels"][0] for doc in docs for ex in task.build_examples(doc, random.Random(doc.id))]
    assert labels.count(1) == 100  # every kept marker pair is an example
    share = labels.count(0) / len(labels)
    assert share == pytest.approx(ratio, abs=0.05)


def test_auto_no_conn_matches_the_average_kept_label(tokenizer):
    pairs = ([("A.", "However, b.")] * 60 + [("A.", "Meanwhile, b.")] * 20 + [("A.", "B c.")] * 900)
    docs = [pair_document(pairs[i::10], f"d{i}") for i in range(10)]
    task = make(tokenizer)
    task.fit(docs)
    labels = [ex["labels"][0] for doc in docs for ex in task.build_examples(doc, random.Random(doc.id))]
    assert labels.count(0) == pytest.approx(40, abs=15)  # (60 + 20) / 2 kept labels


def test_examples_are_a_function_of_the_rng(tokenizer, many_documents):
    task = make(tokenizer, min_count=1)
    task.fit(many_documents)
    doc = many_documents[3]
    assert task.build_examples(doc, random.Random(7)) == task.build_examples(doc, random.Random(7))


@pytest.mark.parametrize("options, message", [
    ({"labels": "fine"}, "labels='fine' is not one of coarse, full"),
    ({"min_count": 0}, "min_count=0 must be an integer >= 1"),
    ({"no_conn_ratio": 1.0}, "no_conn_ratio=1.0 must be 'auto' or a number in"),
])
def test_bad_options_are_refused(tokenizer, options, message):
    with pytest.raises(ConfigError, match=f"^task 'discourse_relation': {message}"):
        make(tokenizer, **options)
