"""Parse parts: a corpus source cut into pieces that any worker parses on its own.

A part is a small picklable description of about ``PART_BYTES`` of input: a byte range of a
JSONL or one-document-per-line file (cut after a newline, with the line number it starts at), a
group of .txt files (or of BBC article files), a range of rows of a Hugging Face dataset, or a run
of wiki pages (or of Wikipedia lead entries). The cut is a function of the source bytes alone
(never of the number of workers or the engine), so the parsed store is the same whichever process
parses which part. Files are read by the worker from its own range, so only the description
travels; a wiki dump is the exception: bz2 and XML cannot be entered mid-stream, so the planner
reads pages sequentially and hands each run of page texts to a worker, which does the expensive
part (the wikitext to sections conversion). The Wikipedia leads file is the same case (one JSON
object): the planner reads it and hands runs of entries to the workers, which split them into
sentences.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ernie_cl.corpus import readers, wiki
from ernie_cl.corpus.sentences import RawDocument, RawSection

PART_BYTES = 2_000_000  # input a worker parses at a time: one shard of the store's first pass


@dataclass(frozen=True)
class Part:
    kind: str  # "lines", "jsonl", "txt", "bbc", "hf", "wiki" or "wikileads"
    path: str = ""
    start: int = 0  # byte offset (lines, jsonl) or row (hf)
    end: int = 0
    first_line: int = 1
    files: tuple[str, ...] = ()  # txt, bbc: paths relative to ``path``
    pages: tuple[tuple[str, ...], ...] = ()  # wiki: (id, title, wikitext); wikileads: (id, title, heading, text)
    options: tuple[str, ...] = ()  # jsonl: (text_field, title_field); hf: (split, text_field, title_field)


def line_parts(kind: str, path: Path, options: tuple[str, ...] = ()) -> Iterator[Part]:
    for start, end, first_line in readers.line_ranges(path, PART_BYTES):
        yield Part(kind, str(path), start, end, first_line, options=options)


def txt_parts(folder: Path, files: list[Path] | None = None, kind: str = "txt") -> Iterator[Part]:
    """Groups of about PART_BYTES of ``files`` (default every .txt file under ``folder``), in order."""
    group: list[str] = []
    size = 0
    for path in readers.txt_files(folder) if files is None else files:
        group.append(path.relative_to(folder).as_posix())
        size += path.stat().st_size
        if size >= PART_BYTES:
            yield Part(kind, str(folder), files=tuple(group))
            group, size = [], 0
    if group:
        yield Part(kind, str(folder), files=tuple(group))


def _runs(items: Iterator[tuple], text_of: int) -> Iterator[tuple]:
    """Consecutive runs of items holding about PART_BYTES of text (item[text_of]) each."""
    run: list[tuple] = []
    size = 0
    for item in items:
        run.append(item)
        size += len(item[text_of])
        if size >= PART_BYTES:
            yield tuple(run)
            run, size = [], 0
    if run:
        yield tuple(run)


def wiki_parts(dump: Path, stats: Counter) -> Iterator[Part]:
    """Runs of pages of about PART_BYTES of wikitext; the planner's counts (redirects, other
    namespaces) go to ``stats``."""
    for pages in _runs(wiki.wiki_pages(dump, stats), text_of=2):
        yield Part("wiki", str(dump), pages=pages)


def wiki_lead_parts(path: Path, stats: Counter) -> Iterator[Part]:
    """Runs of Wikipedia lead entries with about PART_BYTES of text (characters), sorted by title."""
    for entries in _runs(readers.wiki_leads(path, stats), text_of=3):
        yield Part("wikileads", str(path), pages=entries)


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
    elif part.kind == "bbc":
        yield from readers.read_bbc(path, stats, [path / f for f in part.files])
    elif part.kind == "hf":
        split, text_field, title_field = part.options
        if (part.path, split) not in _HF_OPEN:
            _HF_OPEN[(part.path, split)] = readers.load_hf(part.path, split)
        yield from readers.read_hf(_HF_OPEN[(part.path, split)], part.path, stats, text_field, title_field,
                                   part.start, part.end)
    elif part.kind == "wiki":
        for doc_id, title, wikitext in part.pages:
            yield RawDocument(doc_id, title, wiki.wikitext_to_sections(wikitext))
    elif part.kind == "wikileads":
        for doc_id, title, heading, text in part.pages:
            yield RawDocument(doc_id, title, [RawSection(heading, text)])
    else:
        raise ValueError(f"unknown part kind {part.kind!r}")


def part_size(part: Part) -> int:
    """Input bytes (characters for wiki pages and leads) of a part, for progress in MB."""
    if part.kind in ("lines", "jsonl"):
        return part.end - part.start
    if part.kind in ("wiki", "wikileads"):
        return sum(len(p[-1]) for p in part.pages)
    if part.kind in ("txt", "bbc"):
        return sum((Path(part.path) / f).stat().st_size for f in part.files)
    return 0
