"""MediaWiki XML dump reader: plain article text, section headings and link anchors as entities.

The dump is streamed with ``iterparse`` (memory stays flat on a full dump). Each kept page
(namespace 0, not a redirect) is parsed once with mwparserfromhell and flattened by one walk
over its node tree, which is both faster and more faithful than ``strip_code`` followed by
regex clean-up: templates, <ref>s, tables, comments, math and file/category/interlanguage links
are dropped; bold/italic/HTML formatting keeps its inner text; every other [[link]] emits its
visible text and records it as an entity span.

Link trail rule (as MediaWiki renders it): lowercase ASCII letters right after ``]]`` belong
to the link, so ``[[dog]]s`` gives the text "dogs" and the entity span covers "dogs".
"""

from __future__ import annotations

import bz2
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import mwparserfromhell
from mwparserfromhell.nodes import ExternalLink, Heading, HTMLEntity, Tag, Text, Wikilink
from mwparserfromhell.wikicode import Wikicode

from ernie_cl.corpus.document import Span
from ernie_cl.corpus.sentences import RawSection, delete_matches
from ernie_cl.errors import CorpusError

# Sections dropped with all their subsections (compared case-insensitively).
BOILERPLATE_SECTIONS = frozenset({
    "references", "external links", "see also", "further reading", "notes", "bibliography",
    "sources", "citations", "footnotes", "notes and references", "references and notes",
    "works cited", "external link", "reference",
})
_DROP_LINK_NAMESPACES = frozenset({"file", "image", "media", "category"})
_INTERLANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z]+)*$|^simple$")  # de:, fr:, zh-min-nan:, simple:
# Tags whose contents are not prose (citations, formulas, code, galleries, tables).
_DROP_TAGS = frozenset({
    "ref", "references", "table", "math", "chem", "ce", "gallery", "timeline", "score",
    "syntaxhighlight", "source", "pre", "imagemap", "graph", "mapframe", "templatedata",
    "noinclude", "includeonly", "hiero", "inputbox", "categorytree", "caption",
})
# Tags that end a paragraph: list items, definition lists, block containers, rules.
_BLOCK_TAGS = frozenset({
    "li", "dt", "dd", "p", "div", "blockquote", "hr", "ul", "ol", "dl", "center", "poem",
})
_LINE_BREAK_TAGS = frozenset({"br"})
_LINK_TRAIL = re.compile(r"[a-z]+")
# Removed from the raw wikitext before parsing: a broken citation or table otherwise derails
# mwparserfromhell for the rest of the paragraph, and skipping them makes parsing faster.
_COMMENT = re.compile(r"<!--.*?(-->|$)", re.S)
_REF = re.compile(r"<ref\b[^>]*?/>|<ref\b[^>]*?>.*?</ref\s*>", re.S | re.I)
_TABLE_OPEN = re.compile(r"^[\s:]*\{\|")
_TABLE_CLOSE = re.compile(r"^\s*\|\}")
_FILE_LINK = re.compile(r"\[\[\s*(file|image|media)\s*:", re.I)
_LINK_BRACKETS = re.compile(r"\[\[|\]\]")
# Residue mwparserfromhell leaves as plain text when markup is unbalanced (unclosed tags, stray
# quotes or brackets), plus behaviour switches like __NOTOC__; deleted from each section's text.
_HTML_TAG_NAMES = (
    "abbr|b|bdi|bdo|big|blockquote|br|caption|center|chem|cite|code|dd|del|div|dl|dt|em|font|"
    "gallery|h[1-6]|hr|i|includeonly|ins|kbd|li|math|mark|noinclude|nowiki|ol|onlyinclude|p|poem|"
    "pre|q|ref|references|rp|rt|ruby|s|samp|score|section|small|source|span|strike|strong|sub|sup|"
    "syntaxhighlight|table|td|templatestyles|th|time|timeline|tr|tt|u|ul|var|wbr"
)
_RESIDUE = re.compile(
    r"'{2,}|\[\[|\]\]|\{\{|\}\}|\{\||\|\}|={2,}|__[A-Z]+__|&(?:lt|gt|amp|quot|nbsp);"
    rf"|</?(?:{_HTML_TAG_NAMES})\b[^<>]*>",
    re.I,
)


class _Flattener:
    """One walk over a page's node tree into sections of plain text plus entity spans."""

    def __init__(self) -> None:
        self.sections: list[RawSection] = []
        self.parts: list[str] = []
        self.length = 0
        self.entities: list[Span] = []
        self.heading, self.level = "", 0
        self.skip_level: int | None = None  # inside a boilerplate section of this level
        self.trail_entity: int | None = None  # entity that a following link trail extends
        self.in_list_item = False  # a "*", "#", ";" or ":" item ends with its line

    def emit(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)

    def close_section(self) -> None:
        if self.skip_level is None:  # a boilerplate section is never emitted
            text, entities = delete_matches("".join(self.parts), self.entities, _RESIDUE)
            self.sections.append(RawSection(self.heading, text, entities, self.level))
        self.parts, self.length, self.entities = [], 0, []

    def walk(self, code: Wikicode) -> None:
        for node in code.nodes:
            if isinstance(node, Heading):
                self.heading_node(node)
            elif self.skip_level is None:
                self.node(node)

    def heading_node(self, node: Heading) -> None:
        if self.skip_level is not None and node.level > self.skip_level:
            return  # a subsection of a dropped section
        self.close_section()
        self.trail_entity = None
        self.heading, self.level = heading_text(node.title), node.level
        self.skip_level = node.level if self.heading.lower() in BOILERPLATE_SECTIONS else None

    def node(self, node: object) -> None:
        trail, self.trail_entity = self.trail_entity, None
        if isinstance(node, Text):
            text = node.value
            if trail is not None and (m := _LINK_TRAIL.match(text)):
                start, end = self.entities[trail]
                self.entities[trail] = (start, end + m.end())
            if self.in_list_item and "\n" in text:
                text, self.in_list_item = text.replace("\n", "\n\n", 1), False
            self.emit(text)
        elif isinstance(node, Wikilink):
            self.link(node)
        elif isinstance(node, HTMLEntity):
            self.emit(node.normalize())
        elif isinstance(node, Tag):
            self.tag(node)
        elif isinstance(node, ExternalLink) and node.brackets and node.title is not None:
            self.walk(node.title)  # [http://x label] shows its label; bare URLs are dropped
        # Templates, template arguments and comments are dropped (also anything unknown).

    def tag(self, node: Tag) -> None:
        name = str(node.tag).strip().lower()
        if name in _DROP_TAGS:
            return
        if name in _LINE_BREAK_TAGS:
            self.emit("\n")
        elif name in _BLOCK_TAGS:
            self.emit("\n\n")
            self.in_list_item = node.wiki_markup is not None and name in ("li", "dt", "dd")
        if node.contents is not None and not node.self_closing:
            self.walk(node.contents)
            if name in _BLOCK_TAGS:
                self.emit("\n\n")

    def link(self, node: Wikilink) -> None:
        target = str(node.title).strip()
        visible = target[1:] if target.startswith(":") else target  # [[:Category:X]] is shown
        prefix, colon, _ = visible.partition(":")
        hidden = prefix.strip().lower() in _DROP_LINK_NAMESPACES or _INTERLANGUAGE.match(prefix)
        if colon and hidden and not target.startswith(":"):
            return  # images, categories and interlanguage links are not part of the text
        start = self.length
        if node.text is not None and str(node.text).strip():
            self.walk(node.text)
        elif node.text is not None:  # pipe trick [[Foo (bar)|]] shows "Foo"
            self.emit(re.sub(r"\s*\(.*?\)\s*$", "", visible.rpartition(":")[2] if colon else visible))
        else:
            self.emit(plain_text(mwparserfromhell.parse(visible)))
        if self.length > start and not visible.startswith("#"):
            self.entities.append((start, self.length))
            self.trail_entity = len(self.entities) - 1

    def finish(self) -> list[RawSection]:
        self.close_section()
        return self.sections


def plain_text(code: Wikicode) -> str:
    """Visible text of a wikicode fragment (no spans)."""
    flattener = _Flattener()
    flattener.walk(code)
    return _RESIDUE.sub("", "".join(flattener.parts))


def heading_text(code: Wikicode) -> str:
    return " ".join(plain_text(code).split())


def _drop_tables(wikitext: str) -> str:
    """Remove {| ... |} tables line by line (nesting-aware); they are never prose."""
    if "{|" not in wikitext:
        return wikitext
    kept, depth = [], 0
    for line in wikitext.split("\n"):
        if _TABLE_OPEN.match(line):
            depth += 1
        elif depth and _TABLE_CLOSE.match(line):
            depth -= 1
        elif not depth:
            kept.append(line)
    return "\n".join(kept)


def _drop_file_links(wikitext: str) -> str:
    """Remove [[File:...]] links, whose captions may hold nested links; unclosed ones are kept."""
    out, position = [], 0
    for match in _FILE_LINK.finditer(wikitext):
        if match.start() < position:
            continue  # inside a file link already removed
        depth = 0
        for bracket in _LINK_BRACKETS.finditer(wikitext, match.start()):
            depth += 1 if bracket.group() == "[[" else -1
            if depth == 0:
                out.append(wikitext[position:match.start()])
                position = bracket.end()
                break
    out.append(wikitext[position:])
    return "".join(out)


def preclean(wikitext: str) -> str:
    """Drop comments, <ref>s, tables and file links from raw wikitext before parsing."""
    wikitext = _COMMENT.sub("", wikitext)
    wikitext = _REF.sub("", wikitext)
    return _drop_file_links(_drop_tables(wikitext))


def wikitext_to_sections(wikitext: str) -> list[RawSection]:
    """Sections (lead first, heading "") of one article's wikitext, boilerplate removed."""
    flattener = _Flattener()
    flattener.walk(mwparserfromhell.parse(preclean(wikitext)))
    return flattener.finish()


def _open(path: Path) -> IO[bytes]:
    return bz2.open(path, "rb") if path.suffix == ".bz2" else open(path, "rb")


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def wiki_pages(path: Path, stats: Counter) -> Iterator[tuple[str, str, str]]:
    """(id, title, wikitext) of every article of a MediaWiki XML dump (.xml or .xml.bz2), redirects
    and other namespaces skipped: the cheap sequential part of reading a dump (decompression, XML),
    so that the expensive part, ``wikitext_to_sections``, runs in workers over page ranges.

    Document ids are ``<dbname>:<page id>`` (e.g. ``enwiki:12``), stable across dump versions.
    """
    dbname = "wiki"
    try:
        with _open(path) as stream:
            root = None
            for event, elem in ET.iterparse(stream, events=("start", "end")):
                if root is None:
                    root = elem
                if event == "start":
                    continue
                tag = _local(elem.tag)
                if tag == "dbname":
                    dbname = (elem.text or dbname).strip()
                if tag != "page":
                    continue
                fields = {_local(child.tag): child for child in elem}
                namespace = (fields["ns"].text or "").strip() if "ns" in fields else "0"
                if namespace != "0":
                    stats["pages_other_namespace_dropped"] += 1
                elif "redirect" in fields:
                    stats["redirects_dropped"] += 1
                else:
                    text_elem = fields["revision"].find("{*}text") if "revision" in fields else None
                    wikitext = (text_elem.text if text_elem is not None else None) or ""
                    title = (fields["title"].text or "").strip() if "title" in fields else ""
                    page_id = (fields["id"].text or "").strip() if "id" in fields else title
                    stats["wiki_pages_read"] += 1
                    yield f"{dbname}:{page_id}", title, wikitext
                root.clear()  # drop finished pages so memory stays flat on a full dump
    except ET.ParseError as err:
        raise CorpusError(f"wiki dump '{path}' is not valid XML ({err}); pass an uncorrupted "
                          f"MediaWiki pages-articles .xml or .xml.bz2 dump") from None
    except (OSError, EOFError) as err:
        raise CorpusError(f"cannot read wiki dump '{path}' ({err}); check the file is a complete "
                          f".xml or .xml.bz2 dump") from None
