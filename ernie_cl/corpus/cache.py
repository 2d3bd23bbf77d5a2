"""Fingerprints and the Arrow cache of parsed documents.

The cache is a Hugging Face ``datasets`` Arrow dataset with explicit nested features, saved under
``<cache_dir>/corpus/<key>/``. It is written into a temporary folder beside the target and moved
into place with ``os.replace``, so a crash mid-write never leaves a half cache that a later run
would trust; a sidecar ``corpus_meta.json`` keeps the reader's counters (redirects dropped...).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ernie_cl.corpus.document import Document
from ernie_cl.errors import CorpusError

# Bump when the cache layout changes. Parsing-rule changes need no bump: code_version() covers them.
CACHE_FORMAT = 1
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


def _features() -> Any:
    from datasets import Features, Value

    # Python-list syntax means "list of" in every datasets version (datasets.List is 4.0+ only).
    span = [Value("int32")]
    sentence = {"text": Value("string"), "entities": [span], "phrases": [span]}
    return Features({
        "id": Value("string"),
        "title": Value("string"),
        "sections": [{"heading": Value("string"), "paragraphs": [[sentence]]}],
    })


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Silence datasets' own progress bars (ours is enough), restoring the caller's setting."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def save_documents(target: Path, documents: list[Document], meta: dict[str, Any]) -> None:
    """Write ``documents`` + ``meta`` to ``target`` atomically (temp folder, then os.replace)."""
    from datasets import Dataset

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as err:
        raise CorpusError(f"cannot write the corpus cache under '{target.parent}' ({err.strerror}); "
                          f"pass a writable cache_dir") from None
    try:
        with _quiet_datasets():
            dataset = Dataset.from_list([doc.to_dict() for doc in documents], features=_features())
            dataset.save_to_disk(str(staging / "data"))
        (staging / META_FILE).write_text(json.dumps(meta, sort_keys=True), encoding="utf-8")
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / META_FILE).is_file():
                raise
            # another process finished the same cache first; its copy is identical
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_documents(target: Path) -> tuple[list[Document], dict[str, Any]] | None:
    """The cached documents and meta at ``target``, or None when there is no usable cache."""
    meta_path = target / META_FILE
    if not meta_path.is_file():
        return None
    from datasets import load_from_disk

    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        with _quiet_datasets():
            rows = load_from_disk(str(target / "data")).to_list()
    except (OSError, ValueError) as err:  # damaged cache: rebuild rather than fail
        logging.getLogger(__name__).warning("ignoring unreadable corpus cache %s (%s)", target, err)
        return None
    return [Document.from_dict(row) for row in rows], meta
