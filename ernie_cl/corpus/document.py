"""The document model every corpus reader produces and every pre-training task reads.

A Document is a title plus sections; a section is a heading plus paragraphs; a paragraph is a
list of sentences. Entity and phrase spans are character offsets *within one sentence's text*
(half-open, ``text[start:end]``), so tasks never need to re-split text to find them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

Span = tuple[int, int]


@dataclass(slots=True)  # slots: a corpus shard decodes into many of these
class Sentence:
    text: str
    entities: list[Span] = field(default_factory=list)
    phrases: list[Span] = field(default_factory=list)


@dataclass(slots=True)
class Section:
    heading: str  # "" for the lead section before the first heading
    paragraphs: list[list[Sentence]] = field(default_factory=list)


@dataclass(slots=True)
class Document:
    id: str
    title: str
    sections: list[Section] = field(default_factory=list)

    def sentences(self) -> Iterator[Sentence]:
        """All sentences in reading order."""
        for section in self.sections:
            for paragraph in section.paragraphs:
                yield from paragraph

    def paragraphs(self) -> Iterator[list[Sentence]]:
        for section in self.sections:
            yield from section.paragraphs

    def num_sentences(self) -> int:
        return sum(len(p) for p in self.paragraphs())

    # --- plain-data round trip (for Arrow caching and JSON) -------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "sections": [
                {
                    "heading": s.heading,
                    "paragraphs": [
                        [
                            {
                                "text": sent.text,
                                "entities": [list(e) for e in sent.entities],
                                "phrases": [list(p) for p in sent.phrases],
                            }
                            for sent in paragraph
                        ]
                        for paragraph in s.paragraphs
                    ],
                }
                for s in self.sections
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Document":
        return cls(
            id=data["id"],
            title=data["title"],
            sections=[
                Section(
                    heading=s["heading"],
                    paragraphs=[
                        [
                            Sentence(
                                text=sent["text"],
                                entities=[(int(a), int(b)) for a, b in sent["entities"]],
                                phrases=[(int(a), int(b)) for a, b in sent["phrases"]],
                            )
                            for sent in paragraph
                        ]
                        for paragraph in s["paragraphs"]
                    ],
                )
                for s in data["sections"]
            ],
        )
