"""Corpus loading: readers -> Documents with sentences, entity and phrase spans, cached as Arrow.

Public API::

    corpus = load_corpus("bundled", cache_dir="~/.cache/ernie-cl")
    corpus.train, corpus.heldout, corpus.fingerprint, corpus.stats, corpus.from_cache

May import: ``ernie_cl.errors``, ``ernie_cl.progress`` and ``ernie_cl.faults`` only; it is the first room of the
data path. (``durable`` lives here, the lowest room, because every room writes files a later run trusts.)
"""

from ernie_cl.corpus.document import Document, Section, Sentence, Span
from ernie_cl.corpus.loader import Corpus, SOURCES, load_corpus, split_heldout

__all__ = ["SOURCES", "Corpus", "Document", "Section", "Sentence", "Span", "load_corpus", "split_heldout"]
