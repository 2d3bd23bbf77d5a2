"""Parse parts: a corpus source cut into pieces that any worker parses on its own.

A part is a small picklable description of about ``PART_BYTES`` of input: a byte range of a
JSONL or one-document-per-line file (cut after a newline, with the line number it starts at), a
group of .txt files, a range of rows of a Hugging Face dataset, or a run of wiki pages. The cut is
a function of the source bytes alone (never of the number of workers or the engine), so the
parsed store is the same whichever process parses which part. Files are read by the worker from
its own range, so only the description travels; a wiki dump is the exception: bz2 and XML cannot
be entered mid-stream, so the planner reads pages sequentially and hands each run of page texts
to a worker, which does the expensive part (the wikitext to sections conversion).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ernie_cl.corpus import readers, wiki
from ernie_cl.corpus.sentences import RawDocument

PART_BYTES = 2_000_000  # input a worker parses at a time: one shard of the store's first pass


@dataclass(frozen=True)
class Part:
    kind: str  # "lines", "jsonl", "txt", "hf" or "wiki"
    path: str = ""
    start: int = 0  # byte offset (lines, jsonl) or row (hf)
    end: int = 0
    first_line: int = 1
    files: tuple[str, ...] = ()  # txt: paths relative to ``path``
    pages: tuple[tuple[str, str, str], ...] = ()  # wiki: (id, title, wikitext)
    options: tuple[str, ...] = ()  # jsonl: (text_field, title_field); hf: (split, text_field, title_field)


def line_parts(kind: str, path: Path, options: tuple[str, ...] = ()) -> Iterator[Part]:
    for start, end, first_line in readers.line_ranges(path, PART_BYTES):
        yield Part(kind, str(path), start, end, first_line, options=options)


def txt_parts(folder: Path) -> Iterator[Part]:
    group: list[str] = []
    size = 0
    for path in readers.txt_files(folder):
        group.append(path.relative_to(folder).as_posix())
        size += path.stat().st_size
        if size >= PART_BYTES:
            yield Part("txt", str(folder), files=tuple(group))
            group, size = [], 0
    if group:
        yield Part("txt", str(folder), files=tuple(group))


def wiki_parts(dump: Path, stats: Counter) -> Iterator[Part]:
    """Runs of pages of about PART_BYTES of wikitext; the planner's counts (redirects, other
    namespaces) go to ``stats``."""
    pages: list[tuple[str, str, str]] = []
    size = 0
    for page in wiki.wiki_pages(dump, stats):
        pages.append(page)
        size += len(page[2])
        if size >= PART_BYTES:
            yield Part("wiki", str(dump), pages=tuple(pages))
            pages, size = [], 0
    if pages:
        yield Part("wiki", str(dump), pages=tuple(pages))


HF_ROWS = 2_000  # rows of a Hugging Face dataset in one part


def hf_parts(name: str, dataset: Any, split: str, text_field: str, title_field: str) -> Iterator[Part]:
    for start in range(0, len(dataset), HF_ROWS):
        yield Part("hf", name, start, min(start + HF_ROWS, len(dataset)), options=(split, text_field, title_field))


_HF_OPEN: dict[tuple[str, str], Any] = {}  # a worker opens a dataset (memory-mapped) once


def read_part(part: Part, stats: Counter) -> Iterator[RawDocument]:
    """The raw documents of one part, in the source's order."""
    path = Path(part.path)
    if part.kind == "lines":
        yield from readers.read_lines_file(path, stats, part.start, part.end, part.first_line)
    elif part.kind == "jsonl":
        yield from readers.read_jsonl(path, stats, *part.options, part.start, part.end, part.first_line)
    elif part.kind == "txt":
        yield from readers.read_txt_folder(path, stats, [path / f for f in part.files])
    elif part.kind == "hf":
        split, text_field, title_field = part.options
        if (part.path, split) not in _HF_OPEN:
            _HF_OPEN[(part.path, split)] = readers.load_hf(part.path, split)
        yield from readers.read_hf(_HF_OPEN[(part.path, split)], part.path, stats, text_field, title_field,
                                   part.start, part.end)
    elif part.kind == "wiki":
        for doc_id, title, wikitext in part.pages:
            yield RawDocument(doc_id, title, wiki.wikitext_to_sections(wikitext))
    else:
        raise ValueError(f"unknown part kind {part.kind!r}")


def part_size(part: Part) -> int:
    """Input bytes (characters for wiki pages) of a part, for progress in MB."""
    if part.kind in ("lines", "jsonl"):
        return part.end - part.start
    if part.kind == "wiki":
        return sum(len(p[2]) for p in part.pages)
    if part.kind == "txt":
        return sum((Path(part.path) / f).stat().st_size for f in part.files)
    return 0
