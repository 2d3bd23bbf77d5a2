"""Knowledge masking (ERNIE 1.0): masked-token prediction over word, phrase and entity units.

Input: a packed chunk ``[CLS] sentence sentence ... [SEP]``, token_type_ids all 0.

Label construction, per chunk:

1. Every sentence of the chunk draws its masking level from the ``levels`` shares:
   - ``word``: every word (all sub-tokens of one tokenizer word) is a unit: whole-word masking;
   - ``phrase``: the words of every phrase span form one unit; the other words stay single units;
   - ``entity``: the same with the entity spans.
   Overlapping spans are resolved longest first, so the units always partition the chunk's tokens.
   A sentence without spans at the drawn level is therefore masked word by word.
2. Every unit is chosen independently with probability ``mask_prob``. If no unit is chosen, one
   is chosen uniformly at random, so that every example carries at least one target.
3. Every sub-token of a chosen unit is a target: its label is its original id. All other
   positions (and [CLS]/[SEP]) are ``IGNORE``.
4. Each target token independently becomes [MASK] with probability ``mask_token_prob``, a random
   non-special vocabulary id with probability ``random_token_prob``, and stays itself otherwise.

Why the expected number of targets is the same at every level: the units partition the tokens,
so E[#targets] = sum over units of mask_prob * |unit| = mask_prob * #tokens whatever the unit
sizes are. Phrase and entity levels produce fewer, larger units; they change which tokens are
masked together (the model must recover a whole entity from its context), not how many. The
at-least-one rule adds at most one unit per chunk: negligible for full-length chunks.

Head: BERT's transform, then a decoder whose weight is the input embedding matrix itself (tied,
as in BERT and ERNIE) plus its own bias; softmax over the vocabulary at target positions only.
"""

from __future__ import annotations

import math
import random
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ernie_cl.data.tokenizer import TextTokenizer
from ernie_cl.errors import ConfigError

from ._packed import HeadTransform, PackedTokenTask
from .base import IGNORE, register_task
from .packing import Chunk, span_word_groups

#: masking level -> the Sentence attribute holding its spans (None: single words only)
LEVEL_SPANS: dict[str, str | None] = {"word": None, "phrase": "phrases", "entity": "entities"}


def mask_units(
    ids: Sequence[int],
    units: Sequence[Sequence[int]],
    rng: random.Random,
    *,
    mask_id: int,
    random_ids: Sequence[int],
    mask_prob: float = 0.15,
    mask_token_prob: float = 0.8,
    random_token_prob: float = 0.1,
) -> tuple[list[int], list[int], list[int]]:
    """Mask whole units of ``ids``. ``units`` are lists of positions into ``ids``; positions in no
    unit are never targets. Returns (masked ids, labels with ``IGNORE`` off target, indices of the
    chosen units). Steps 2-4 of the module docstring."""
    chosen = [i for i in range(len(units)) if rng.random() < mask_prob]
    if not chosen and units:
        chosen = [rng.randrange(len(units))]
    masked = list(ids)
    labels = [IGNORE] * len(ids)
    for unit_index in chosen:
        for pos in units[unit_index]:
            labels[pos] = ids[pos]
            draw = rng.random()
            if draw < mask_token_prob:
                masked[pos] = mask_id
            elif draw < mask_token_prob + random_token_prob:
                masked[pos] = rng.choice(random_ids)
            # else: kept, so the model cannot learn that an unmasked token is never a target
    return masked, labels, chosen


def chunk_units(chunk: Chunk, sentence_levels: Sequence[str]) -> list[list[int]]:
    """Token positions (into ``chunk.ids``) of every unit, in reading order, given each sentence's
    masking level. Step 1 of the module docstring."""
    group_of_word: dict[int, list[int]] = {}
    for level, spans_of in LEVEL_SPANS.items():
        if spans_of is None or level not in sentence_levels:
            continue
        groups = [g for g in span_word_groups(chunk, spans_of) if sentence_levels[chunk.words[g[0]].sentence] == level]
        for group in sorted(groups, key=lambda g: (-len(g), g[0])):  # longest span wins an overlap
            if not any(w in group_of_word for w in group):
                group_of_word.update((w, group) for w in group)
    units: list[list[int]] = []
    words = chunk.words
    for w, word in enumerate(words):
        group = group_of_word.get(w)
        if group is None:  # a word of its own (most words)
            units.append(list(range(word.token_start, word.token_end)))
        elif group[0] == w:  # emit a group once, at its first word
            units.append([pos for g in group for pos in range(words[g].token_start, words[g].token_end)])
    return units


class TiedDecoder(nn.Module):
    """Vocabulary projection whose weight *is* the input embedding Parameter (not a copy), plus a
    bias of its own. Rows past ``num_labels`` (an embedding padded for speed) are not scored."""

    def __init__(self, weight: nn.Parameter, num_labels: int):
        super().__init__()
        self.weight = weight
        self.bias = nn.Parameter(torch.zeros(num_labels))
        self.num_labels = num_labels

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # slice only a padded table: a slice's backward writes a zero-filled vocabulary-sized gradient
        weight = self.weight if self.weight.shape[0] == self.num_labels else self.weight[: self.num_labels]
        return F.linear(hidden, weight, self.bias)


class MaskedTokenHead(nn.Module):
    def __init__(self, hidden_size: int, input_embeddings: nn.Embedding, num_labels: int):
        super().__init__()
        if input_embeddings.num_embeddings < num_labels:
            raise ConfigError(
                f"knowledge_masking: the encoder's embedding has {input_embeddings.num_embeddings} rows but the "
                f"tokenizer has {num_labels} ids; resize the encoder's embeddings to the tokenizer"
            )
        # The transform maps into the embedding space (equal to hidden_size for BERT-like encoders).
        self.transform = HeadTransform(hidden_size, input_embeddings.embedding_dim)
        self.decoder = TiedDecoder(input_embeddings.weight, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden))


@register_task
class KnowledgeMasking(PackedTokenTask):
    """ERNIE 1.0 multi-level (word / phrase / entity) masking; see the module docstring."""

    name = "knowledge_masking"
    level = "token"
    corrupts_input = True  # fused token-level tasks label this masked input
    version: ClassVar[int] = 1
    default_options: ClassVar[dict[str, Any]] = {
        "levels": {"word": 0.4, "phrase": 0.3, "entity": 0.3},
        "mask_prob": 0.15,
        "mask_token_prob": 0.8,
        "random_token_prob": 0.1,
    }

    def __init__(self, tokenizer: TextTokenizer, seq_len: int, options: dict[str, Any] | None = None):
        super().__init__(tokenizer, seq_len, options)
        levels = self.options["levels"]
        self._level_names = [k for k in LEVEL_SPANS if levels.get(k, 0) > 0]
        self._level_weights = [float(levels[k]) for k in self._level_names]
        # Replacement tokens: any real vocabulary entry, never [CLS]/[SEP]/[PAD]/[MASK]/[UNK].
        self._random_ids = [i for i in range(tokenizer.vocab_size) if i not in tokenizer.special_ids]

    def validate_options(self) -> None:
        levels = self.options["levels"]
        if not isinstance(levels, dict) or not levels:
            raise ConfigError(f"task 'knowledge_masking': option levels must map levels to shares, e.g. {self.default_options['levels']}")
        unknown = sorted(set(levels) - set(LEVEL_SPANS))
        if unknown:
            raise ConfigError(f"task 'knowledge_masking': unknown masking level(s) {', '.join(map(str, unknown))} in levels; known: {', '.join(LEVEL_SPANS)}")
        for key, share in levels.items():
            if not _is_number(share) or share < 0:
                raise ConfigError(f"task 'knowledge_masking': levels.{key} must be a non-negative number, got {share!r}")
        if sum(levels.values()) <= 0:
            raise ConfigError("task 'knowledge_masking': the levels shares sum to 0; give at least one level a positive share")
        for key in ("mask_prob", "mask_token_prob", "random_token_prob"):
            value = self.options[key]
            if not _is_number(value) or not 0 <= value <= 1:
                raise ConfigError(f"task 'knowledge_masking': option {key} must be a number in [0, 1], got {value!r}")
        if self.options["mask_prob"] == 0:
            raise ConfigError("task 'knowledge_masking': mask_prob must be > 0 (0.15 is the standard value)")
        if self.options["mask_token_prob"] + self.options["random_token_prob"] > 1:
            raise ConfigError("task 'knowledge_masking': mask_token_prob + random_token_prob must be at most 1")

    @property
    def num_labels(self) -> int:
        return self.tokenizer.vocab_size

    def sentence_levels(self, chunk: Chunk, rng: random.Random) -> list[str]:
        return rng.choices(self._level_names, weights=self._level_weights, k=len(chunk.sentences))

    def label_chunk(self, chunk: Chunk, rng: random.Random) -> tuple[list[int], list[int]]:
        units = chunk_units(chunk, self.sentence_levels(chunk, rng))
        masked, labels, _ = mask_units(
            chunk.ids,
            units,
            rng,
            mask_id=self.tokenizer.mask_id,
            random_ids=self._random_ids,
            mask_prob=self.options["mask_prob"],
            mask_token_prob=self.options["mask_token_prob"],
            random_token_prob=self.options["random_token_prob"],
        )
        return masked, labels

    def make_head(self, hidden_size: int, input_embeddings: nn.Embedding) -> nn.Module:
        return MaskedTokenHead(hidden_size, input_embeddings, self.num_labels)

    def label_name(self, label: int) -> str:
        return self.tokenizer.id_to_token(label)

    def describe_example(self, example: dict[str, list[int]]) -> str:
        """Tokens as the model sees them; a target shows its original token in braces:
        ``the [MASK]{cat} sat``."""
        shown = []
        for token_id, label in zip(example["input_ids"], example["labels"]):
            token = self.tokenizer.id_to_token(token_id)
            shown.append(token if label == IGNORE else f"{token}{{{self.tokenizer.id_to_token(label)}}}")
        return " ".join(shown)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
