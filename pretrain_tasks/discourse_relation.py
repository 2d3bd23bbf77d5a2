"""Discourse relation (ERNIE 2.0, English data as in Discovery, Sileo et al. 2019): which discourse
marker joined two adjacent sentences, with the marker removed from the input.

Input: ``[CLS] s1 [SEP] s2' [SEP]`` (segment ids 0 then 1); the label is predicted from [CLS].

Label construction, for every pair of adjacent sentences (s1, s2) of one paragraph (a marker at
the start of a paragraph relates it to the whole previous paragraph, not to one sentence):

1. s2 is matched against Discovery's 173 markers (``data/discourse_markers.txt``): case-insensitive,
   whole words, any whitespace between a marker's words; the LONGEST marker that begins s2 wins.
   A marker listed with a trailing comma counts only when a comma follows it in the text
   ("Still, he left" is ``still,``; "Still water" is not); for the other markers a comma after them
   is optional and removed with them ("However, he left" is ``however``).
2. If a marker matches, it (and its comma) is stripped from s2; the rest keeps a capital first
   letter when s2 had one, so a cased input does not give away that something was removed. The
   label is the marker (``labels: full``) or its sense group (``labels: coarse``, the groups of
   ``data/discourse_marker_groups.txt``). A pair whose s2 begins with a marker's words but breaks
   its comma rule, or has nothing left after the marker, is not used at all: neither a marker nor
   a clear ``[no-conn]`` pair.
3. If no marker begins s2, the pair is a ``[no-conn]`` candidate (label 0). Such pairs vastly
   outnumber marker pairs, so each is kept with the probability that makes no-connective
   examples ``no_conn_ratio`` of the split's examples; ``"auto"`` makes ``[no-conn]`` exactly as
   frequent as the average kept marker label (Discovery's classes are balanced the same way).
4. Labels seen fewer than ``min_count`` times in the split are dropped (their pairs yield no
   example), logged once per split and listed in ``task.dropped_labels``. The LABEL SPACE does not
   shrink: ids and ``num_labels`` depend on the options alone (coarse: 14, full: 174), because the
   head is built before any example and the train and held-out splits must agree on ids.
   ``fit`` sees one split at a time, so the counts (and drops) are per split: a small held-out
   split keeps fewer labels than train. A split with no marker pair at all, or none reaching
   ``min_count``, raises CorpusError. Documents without a paragraph of two sentences (one-sentence
   documents) give no pair: ``fit`` logs how many and keeps the count in ``skipped_documents``.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from functools import lru_cache, partial
from importlib import resources
from typing import Any, ClassVar, Iterable, Sequence

from ernie_cl.corpus.document import Document
from ernie_cl.corpus.workers import map_ranges
from ernie_cl.data.tokenizer import TextTokenizer
from ernie_cl.errors import ConfigError, CorpusError

from ._segments import SentenceTask, join_segments, split_segments
from .base import register_task

logger = logging.getLogger(__name__)

NO_CONN = "[no-conn]"
LABEL_SETS = ("coarse", "full")


@dataclass(frozen=True)
class Marker:
    text: str  # lower case, words separated by one space: "as a result"
    needs_comma: bool  # listed with a trailing comma: it must be followed by one in the text

    @classmethod
    def parse(cls, spec: str) -> "Marker":
        """A marker as the data files spell it: ``as_a_result,``."""
        needs_comma = spec.endswith(",")
        return cls(spec.rstrip(",").replace("_", " ").lower(), needs_comma)


def _data_lines(name: str) -> list[str]:
    text = resources.files("pretrain_tasks").joinpath("data", name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@lru_cache(maxsize=None)
def discovery_markers() -> tuple[Marker, ...]:
    """The 173 Discovery markers in file order (``[no-conn]`` is not a marker)."""
    return tuple(Marker.parse(line) for line in _data_lines("discourse_markers.txt") if line != NO_CONN)


@lru_cache(maxsize=None)
def marker_groups() -> dict[str, str]:
    """marker text -> coarse group, in the groups' file order."""
    groups: dict[str, str] = {}
    for line in _data_lines("discourse_marker_groups.txt"):
        group, _, specs = line.partition(":")
        groups.update((Marker.parse(spec).text, group.strip()) for spec in specs.split())
    return groups


class MarkerMatcher:
    """Finds the marker that begins a sentence: longest whole-word match, comma rule checked."""

    def __init__(self, markers: Iterable[Marker]):
        self.markers = {m.text: m for m in markers}
        # Alternation tries alternatives in order, so longest-first order makes the longest marker win.
        ordered = sorted(self.markers, key=lambda t: (-len(t.split()), -len(t), t))
        words = "|".join(r"\s+".join(map(re.escape, t.split())) for t in ordered)
        self._pattern = re.compile(rf"\s*({words})(?![\w'’-])(\s*,)?\s*", re.IGNORECASE)

    def strip(self, sentence: str) -> tuple[Marker | None, str | None]:
        """(None, sentence) when no marker begins the sentence; (marker, rest) when one does, with
        the marker and its comma removed; (marker, None) when the words of a marker begin the
        sentence but break its comma rule or nothing is left after it."""
        found = self._pattern.match(sentence)
        if found is None:
            return None, sentence
        marker = self.markers[" ".join(found.group(1).lower().split())]
        rest = sentence[found.end():]
        if (marker.needs_comma and found.group(2) is None) or not any(ch.isalnum() for ch in rest):
            return marker, None
        if found.group(1)[0].isupper():
            rest = rest[0].upper() + rest[1:]
        return marker, rest


def count_labels(task: "DiscourseRelation", documents: Sequence[Document]) -> tuple[list[int], int, int]:
    """(pairs per label id, [no-conn] candidates, documents without a two-sentence paragraph) of
    some documents: ``fit`` adds these up over the split, read by the workers (``map_ranges``)."""
    counts, candidates, pairless = [0] * task.num_labels, 0, 0
    for doc in documents:
        pairless += not any(len(p) >= 2 for p in doc.paragraphs())
        for _, _, label in task.pairs(doc):
            if label is None:
                candidates += 1
            else:
                counts[label] += 1
    return counts, candidates, pairless


@register_task
class DiscourseRelation(SentenceTask):
    """Predict the removed discourse marker (or its sense group) of a sentence pair; see the module
    docstring."""

    name = "discourse_relation"
    version: ClassVar[int] = 1
    default_options: ClassVar[dict[str, Any]] = {
        "labels": "coarse",  # coarse: 13 sense groups + [no-conn]; full: 173 markers + [no-conn]
        "min_count": 5,  # labels seen fewer times in a split yield no examples there
        "no_conn_ratio": "auto",  # share of [no-conn] examples; auto = the average kept label's share
    }

    def __init__(self, tokenizer: TextTokenizer, seq_len: int, options: dict[str, Any] | None = None):
        super().__init__(tokenizer, seq_len, options)
        markers = discovery_markers()
        self.matcher = MarkerMatcher(markers)
        if self.options["labels"] == "full":
            self.label_names = [NO_CONN] + [m.text for m in markers]
            self._marker_label = {m.text: i + 1 for i, m in enumerate(markers)}
        else:
            groups = list(dict.fromkeys(marker_groups().values()))
            self.label_names = [NO_CONN] + groups
            self._marker_label = {m: groups.index(g) + 1 for m, g in marker_groups().items()}
        self.label_counts: dict[str, int] = {}
        self.dropped_labels: list[str] = []
        self._kept: set[int] | None = None  # set by fit
        self._no_conn_keep = 0.0

    def validate_options(self) -> None:
        labels, min_count, ratio = self.options["labels"], self.options["min_count"], self.options["no_conn_ratio"]
        if labels not in LABEL_SETS:
            raise ConfigError(f"task 'discourse_relation': labels={labels!r} is not one of {', '.join(LABEL_SETS)}")
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ConfigError(f"task 'discourse_relation': min_count={min_count!r} must be an integer >= 1, e.g. 5")
        if ratio != "auto" and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1):
            raise ConfigError(f"task 'discourse_relation': no_conn_ratio={ratio!r} must be 'auto' or a number in [0, 1), e.g. 0.1")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def label_name(self, label: int) -> str:
        return self.label_names[label] if 0 <= label < len(self.label_names) else str(label)

    def pairs(self, doc: Document) -> Iterable[tuple[str, str, int | None]]:
        """(s1, s2 without its marker, label id) for every usable adjacent pair of a paragraph;
        the label is None for a [no-conn] candidate."""
        for paragraph in doc.paragraphs():
            for first, second in zip(paragraph, paragraph[1:]):
                marker, rest = self.matcher.strip(second.text)
                if marker is None:
                    yield first.text, second.text, None
                elif rest is not None:
                    yield first.text, rest, self._marker_label[marker.text]

    def fit(self, documents: Sequence[Document]) -> None:
        counts = [0] * self.num_labels
        candidates = 0
        pairless = 0  # documents without a paragraph of two sentences: no pair, no example
        for part_counts, part_candidates, part_pairless in map_ranges(partial(count_labels, self), documents):
            counts = [a + b for a, b in zip(counts, part_counts)]
            candidates += part_candidates
            pairless += part_pairless
        where = f"in the {len(documents)} document(s) of this split"
        if pairless:
            where += f" ({pairless} of them without a paragraph of two sentences)"
        if not any(counts):
            raise CorpusError(f"task 'discourse_relation' found no adjacent sentence pair whose second sentence begins "
                              f"with a discourse marker ('However,', 'As a result,', ...) {where}; use a larger corpus of running text")
        self.report_skipped(pairless, len(documents), "have no paragraph of two or more sentences")
        min_count = self.options["min_count"]
        self.label_counts = {self.label_names[i]: n for i, n in enumerate(counts) if n}
        self._kept = {i for i, n in enumerate(counts) if n >= min_count}
        self.dropped_labels = [self.label_names[i] for i, n in enumerate(counts) if 0 < n < min_count]
        if not self._kept:
            raise CorpusError(f"task 'discourse_relation': no discourse marker label occurs min_count={min_count} times {where} "
                              f"(most frequent: {max(counts)}); lower min_count, or use a larger corpus (or eval_fraction)")
        if self.dropped_labels:
            shown = ", ".join(f"{name} ({self.label_counts[name]})" for name in self.dropped_labels[:12])
            more = f" and {len(self.dropped_labels) - 12} more" if len(self.dropped_labels) > 12 else ""
            logger.warning("discourse_relation: %d label(s) seen fewer than min_count=%d times in this split yield no examples: %s%s",
                           len(self.dropped_labels), min_count, shown, more)
        kept_pairs = sum(counts[i] for i in self._kept)
        ratio = self.options["no_conn_ratio"]
        ratio = 1 / (len(self._kept) + 1) if ratio == "auto" else float(ratio)
        wanted = ratio / (1 - ratio) * kept_pairs  # no-conn count that makes it `ratio` of all examples
        self._no_conn_keep = min(1.0, wanted / candidates) if candidates else 0.0

    def chosen_pairs(self, doc: Document, rng: random.Random) -> list[tuple[str, str, int]]:
        """The (s1, s2 without its marker, label id) triples that become this document's examples:
        marker pairs of kept labels, and [no-conn] candidates sampled to ``no_conn_ratio``."""
        if self._kept is None:
            raise RuntimeError("discourse_relation: call fit(documents) on the split before build_examples")
        chosen = []
        for first, second, label in self.pairs(doc):
            if label is None:
                if rng.random() < self._no_conn_keep:
                    chosen.append((first, second, 0))
            elif label in self._kept:
                chosen.append((first, second, label))
        return chosen

    def build_examples(self, doc: Document, rng: random.Random) -> list[dict[str, list[int]]]:
        chosen = self.chosen_pairs(doc, rng)
        if not chosen:
            return []
        texts = [text for first, second, _ in chosen for text in (first, second)]
        encoded = [e.ids for e in self.tokenizer.encode_batch(texts)]
        examples = []
        for index, (_, _, label) in enumerate(chosen):
            ids, types = join_segments(self.tokenizer, encoded[2 * index: 2 * index + 2], self.seq_len)
            examples.append({"input_ids": ids, "token_type_ids": types, "labels": [label]})
        return examples

    def describe_example(self, example: dict[str, list[int]]) -> str:
        segments = split_segments(self.tokenizer, example["input_ids"])
        label = example["labels"][0]
        name = self.label_name(label)
        if label == 0:
            removed = "none ([no-conn]: s2 began with no marker)"
        elif self.options["labels"] == "full":
            removed = repr(name)
        else:
            members = [m for m, g in marker_groups().items() if g == name]
            removed = f"one of the {name} markers ({', '.join(members[:8])}{', ...' if len(members) > 8 else ''})"
        lines = [f"  s1: {self.tokenizer.decode(segments[0])}", f"  s2 (marker removed): {self.tokenizer.decode(segments[1])}"]
        return "\n".join(lines + [f"  removed marker: {removed}", f"  label: {label} ({name})"])
