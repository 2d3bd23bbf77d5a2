"""Tokenizer: train a WordPiece vocabulary on the corpus, or load any local Hugging Face tokenizer.

Training uses `tokenizers` (BERT normalizer, lowercasing by default as the English ERNIE 2.0 release
did, so capitalization is a real prediction target). A trained tokenizer is cached under
``CACHE/tokenizers/<fingerprint>/`` where the fingerprint covers the corpus and the settings, and is
saved as an ordinary Hugging Face tokenizer directory (``AutoTokenizer.from_pretrained`` loads it).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

from ernie_cl.errors import CacheMissingError, ConfigError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class EncodedText:
    """One text's sub-tokens with character offsets into the original text and word indices."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    word_ids: list[Optional[int]]


class TextTokenizer:
    """A thin, typed view of a fast Hugging Face tokenizer with the ids the tasks need."""

    def __init__(self, hf_tokenizer, fingerprint: str, lowercase: bool):
        if not getattr(hf_tokenizer, "is_fast", False):
            raise ConfigError("the tokenizer must be a fast (Rust) Hugging Face tokenizer; save one with tokenizer.json")
        self.hf = hf_tokenizer
        self.fingerprint = fingerprint
        self.lowercase = lowercase
        # A copy without padding or truncation: a tokenizer saved for inference (sentence-transformers
        # models pad every text to 128) would otherwise put [PAD] inside the examples, and a text's
        # ids would depend on the batch it is encoded in. Tasks cut their segments themselves.
        self._backend = copy.deepcopy(hf_tokenizer.backend_tokenizer)
        self._backend.no_padding()
        self._backend.no_truncation()
        self._memo: Optional[dict[str, EncodedText]] = None
        self._plain = _plain_text_path(self._backend)

        def special(*names: str) -> int:
            for n in names:
                value = getattr(hf_tokenizer, n, None)
                if value is not None:
                    return int(value)
            raise ConfigError(f"the tokenizer has none of the special tokens {names}; add them to the tokenizer")

        self.pad_id = special("pad_token_id")
        self.cls_id = special("cls_token_id", "bos_token_id")
        self.sep_id = special("sep_token_id", "eos_token_id")
        self.mask_id = special("mask_token_id")
        self.unk_id = special("unk_token_id")
        self.special_ids = frozenset(int(i) for i in hf_tokenizer.all_special_ids)
        self.vocab_size = len(hf_tokenizer)

    def encode_batch(self, texts: list[str]) -> list[EncodedText]:
        """Encode without special tokens; offsets point into the given (cased) texts. Inside
        ``remembering`` a text already encoded there is not encoded again (the same object comes
        back: read it, do not change it)."""
        memo = self._memo
        if memo is None:
            return self._encode(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in memo]
        if missing:
            memo.update(zip(missing, self._encode(missing)))
        return [memo[t] for t in texts]

    def _encode(self, texts: list[str]) -> list[EncodedText]:
        if self._plain is None:
            encodings = self._backend.encode_batch(texts, add_special_tokens=False)
            return [EncodedText(e.ids, e.offsets, e.word_ids) for e in encodings]
        backend, lowercase, specials = self._plain
        is_plain = [t.isascii() and t.isprintable() and not specials.search(t) for t in texts]
        out: list[Optional[EncodedText]] = [None] * len(texts)
        for fast in (True, False):
            chosen = [i for i, p in enumerate(is_plain) if p == fast]
            if not chosen:
                continue
            batch = [texts[i].lower() if fast and lowercase else texts[i] for i in chosen]
            for i, e in zip(chosen, (backend if fast else self._backend).encode_batch(batch, add_special_tokens=False)):
                out[i] = EncodedText(e.ids, e.offsets, e.word_ids)
        return out  # type: ignore[return-value]

    @contextlib.contextmanager
    def remembering(self, texts: Iterable[str]) -> Iterator[None]:
        """Encode ``texts`` at once, and inside the block serve every ``encode_batch`` of them (and
        of any text encoded inside it) from that: several tasks reading one document's sentences
        tokenize each sentence once. A text's encoding does not depend on its batch (no padding),
        so the examples are the same as without."""
        previous = self._memo
        self._memo = {}
        try:
            self.encode_batch(list(texts))
            yield
        finally:
            self._memo = previous

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids))

    def id_to_token(self, token_id: int) -> str:
        return self.hf.convert_ids_to_tokens(int(token_id))

    def save(self, directory: str | os.PathLike) -> None:
        self.hf.save_pretrained(str(directory))


def _plain_text_path(backend):
    """(a copy of ``backend`` without its normalizer, whether it lowercases, a pattern of the added
    tokens) when the normalizer is a plain ``BertNormalizer``, else None. On printable ASCII text
    that normalizer only lowercases (nothing to clean, no accents, no CJK), keeping every character
    in place: lowercasing in Python and skipping the normalizer gives the same ids and offsets
    (about a third of the Rust encoding time saved). A text containing an added token ([MASK])
    takes the full path: those are matched on the text before normalization."""
    import re

    from tokenizers import normalizers

    spec = json.loads(backend.to_str())
    normalizer = spec.get("normalizer") or {}
    if normalizer.get("type") != "BertNormalizer":
        return None
    plain = copy.deepcopy(backend)
    plain.normalizer = normalizers.Sequence([])
    added = [t["content"] for t in spec.get("added_tokens") or [] if t.get("content")]
    specials = re.compile("|".join(map(re.escape, added)) if added else r"(?!x)x", re.IGNORECASE)
    return plain, bool(normalizer.get("lowercase")), specials


def _hf_fast_tokenizer_from_backend(backend):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def train_wordpiece(texts: Iterable[str] | Iterable[list[str]], vocab_size: int, lowercase: bool, min_frequency: int = 2):
    """Train a BERT-style WordPiece tokenizer and wrap it as a Hugging Face fast tokenizer
    (``texts``: texts, or lists of texts)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, lowercase=lowercase, strip_accents=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    with _rust_threads():
        backend.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return _hf_fast_tokenizer_from_backend(backend)


@contextlib.contextmanager
def _rust_threads() -> Iterator[None]:
    """Let the Rust trainer count on every core (1.8x faster on 2 cores), even where the data
    workers turned the Rust thread pool off before forking; off again afterwards, so the workers
    forked later never use a pool started here."""
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def load_tokenizer(path: str | os.PathLike) -> TextTokenizer:
    """Load a local Hugging Face tokenizer directory (never from a hub)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"tokenizer directory '{path}' does not exist; give a local Hugging Face tokenizer folder")
    try:
        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a tokenizer from '{path}': {str(exc).splitlines()[0]}") from exc
    digest = hashlib.sha256()
    for f in sorted(path.glob("*")):
        if f.is_file():
            digest.update(f.name.encode())
            digest.update(f.read_bytes())
    lowercase = bool(getattr(hf, "do_lower_case", False)) or _backend_lowercases(hf.backend_tokenizer)
    return TextTokenizer(hf, fingerprint=digest.hexdigest()[:16], lowercase=lowercase)


def _backend_lowercases(backend) -> bool:
    # The normalizer's JSON says whether it lowercases (BertNormalizer or a Lowercase step).
    spec = json.loads(backend.to_str()).get("normalizer") or {}
    text = json.dumps(spec)
    return '"Lowercase"' in text or '"lowercase": true' in text


def build_or_load_tokenizer(
    texts: Iterable[str] | Iterable[list[str]],
    corpus_fingerprint: str,
    cache_dir: str | os.PathLike,
    vocab_size: int,
    lowercase: bool = True,
    sample: str | None = None,
    build: bool = True,
) -> TextTokenizer:
    """Train on the corpus once; later calls with the same corpus and settings load the cache.
    ``sample``: what names the sample of the corpus ``texts`` come from, when they are not all of it."""
    settings = [corpus_fingerprint, vocab_size, lowercase, "wordpiece-v1"] + ([sample] if sample else [])
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    target = Path(cache_dir) / "tokenizers" / key
    if not (target / "tokenizer.json").exists():
        if not build:
            raise CacheMissingError(f"no trained tokenizer for this corpus in '{target}'")
        hf = train_wordpiece(texts, vocab_size=vocab_size, lowercase=lowercase)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        hf.save_pretrained(str(tmp))
        if target.exists():  # another process won the race; keep its copy
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    tok = load_tokenizer(target)
    tok.fingerprint = key
    tok.lowercase = lowercase
    return tok
