"""Fingerprints of parsed corpora: what the cache key of ``<cache_dir>/corpus/<key>/`` covers.

The cached corpus is a document store (``store.py``) built in a temporary folder beside the target
and renamed into place, so a crash mid-build never leaves a half cache that a later run would
trust; its ``corpus_meta.json`` (the reader's counters: redirects dropped...) is written last.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


# Bump when the cache layout changes. Parsing-rule changes need no bump: code_version() covers them.
CACHE_FORMAT = 2  # 2: the document store (Arrow shards + per-document arrays)
META_FILE = "corpus_meta.json"
_PARSING_LIBRARIES = ("gensim", "mwparserfromhell", "sentencex")


def code_version() -> str:
    """Hash of this package's source and the parsing libraries' versions.

    Part of every cache key, so editing a parsing rule or upgrading a parser never serves
    documents that the current code would parse differently.
    """
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in _PARSING_LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    sources = sorted(Path(__file__).parent.glob("*.py"))
    return hash_values(files=hash_files(sources), versions=versions)


def hash_files(files: Iterable[Path], root: Path | None = None) -> str:
    """sha256 over each file's (relative) name and bytes, in the given order."""
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(root).as_posix() if root is not None else path.name
        digest.update(name.encode("utf-8") + b"\0")
        with open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def hash_values(**values: Any) -> str:
    """sha256 of a JSON rendering of ``values`` (stable: sorted keys)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode("utf-8")).hexdigest()
