"""One-line messages for schedule errors, and reading YAML strictly (line numbers, duplicate keys).

``explain`` turns a pydantic error into ``key.path: expected ..., got VALUE`` with a close-match
suggestion for unknown keys; ``read_yaml`` refuses duplicate keys and reports syntax errors with
their line and column; every message is kept to one line.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from ernie_cl.errors import ConfigError, did_you_mean


# --- error messages ---------------------------------------------------------------------------
class _At(ValueError):
    """Raised by a schema validator: its error, located at ``path`` below the validator's own
    location (``_explain`` puts the two together)."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _one_line(text: str) -> str:
    """``text`` with every character that str.splitlines() would break at escaped."""
    return _LINE_BREAKS.sub(lambda m: repr(m.group())[1:-1], text)


def _show(value: Any, limit: int = 60) -> str:
    """A value as the user wrote it, on one line and short (repr escapes newlines and control characters)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key(part: Any) -> str:
    text = str(part)
    return text if re.fullmatch(r"[A-Za-z0-9_\-+.]{1,60}", text) else _show(text, 40)


def _path(loc: tuple, data: Any) -> tuple[str, list[Any]]:
    """Render a pydantic location against the input data: ``stages[1].tasks.capitalization``.
    Union branch tags (``list[str]``) are dropped; the kept parts are returned for key hints."""
    out, kept, node = "", [], data
    for part in loc:
        if part == "[key]":
            out += " (the key)"
            continue
        if isinstance(node, list) and isinstance(part, int):
            out, node = out + f"[{part}]", node[part] if part < len(node) else None
        elif isinstance(node, dict) and part in node:
            out, node = out + ("." if out else "") + _key(part), node[part]
        elif isinstance(part, str) and ("[" in part or "-" in part) and node is not None:
            continue  # a union branch tag, not a key of the file
        else:
            out, node = out + ("." if out else "") + _key(part), None
        kept.append(part)
    return out, kept


def _join(where: str, rest: str) -> str:
    if not where:
        return rest
    return where + rest if rest.startswith("[") else f"{where}.{rest}"


_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
    "list_type": "a list", "tuple_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
    "model_attributes_type": "a mapping", "string_too_short": "a non-empty string",
}
_BOUNDS = {"greater_than": ("gt", "greater than"), "greater_than_equal": ("ge", "at least"),
           "less_than": ("lt", "less than"), "less_than_equal": ("le", "at most")}


def _explain(error: dict, data: Any, schema: type[BaseModel]) -> str:
    """One pydantic error as ``key.path: what was expected, got VALUE``; ``schema``: the model that
    validated ``data`` (where the close-match hint for an unknown key looks up the allowed keys)."""

    where, kept = _path(tuple(error["loc"]), data)
    kind, ctx = error["type"], error.get("ctx") or {}
    got = f", got {_show(error['input'])}" if "input" in error else ""
    if isinstance(ctx.get("error"), _At):
        return f"{_join(where, ctx['error'].path)}: {ctx['error']}"
    where = where or "(top level)"
    if kind == "extra_forbidden":
        known = _known_keys(schema, kept[:-1])
        hint = difflib.get_close_matches(str(kept[-1]), known, n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else (f"; known keys: {', '.join(known)}" if known else "")
        return f"{where}: unknown key{suggestion}"
    if kind == "invalid_key":
        return f"{where}: unknown key; keys are names like 'stages', not {_kind(error.get('input'))}"
    if kind == "missing":
        example = " like [{name: first, tasks: [knowledge_masking]}]" if where == "stages" else ""
        return f"{where}: required key is missing; add it{example}"
    if kind in _EXPECTED:
        return f"{where}: expected {_EXPECTED[kind]}{got}"
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"{where}: expected a value {words} {ctx.get(key)}{got}"
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"{where}: expected one of {', '.join(options)}{got}{did_you_mean(error.get('input'), options)}"
    if kind == "too_short":
        return f"{where}: expected at least {ctx.get('min_length')} item(s){got}"
    if kind == "too_long":
        return f"{where}: expected at most {ctx.get('max_length')} item(s)"
    return f"{where}: {re.sub(r'^(Value error|Assertion failed), ', '', error['msg'])}"


def _known_keys(schema: type[BaseModel], loc: list[Any]) -> list[str]:
    """The keys ``schema`` allows at ``loc`` (a path of keys and indices below the top level)."""
    current: Any = schema
    skip = False  # the next part is a dict key or list index, not a field
    for part in loc:
        if skip or isinstance(part, int):
            skip = False
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or str(part) not in current.model_fields:
            return []
        annotation = current.model_fields[str(part)].annotation
        members = [a for a in get_args(annotation) if a is not type(None)] if get_origin(annotation) is Union else [annotation]
        annotation = members[0] if len(members) == 1 else annotation
        if get_origin(annotation) in (list, dict):
            skip = get_origin(annotation) is dict
            annotation = get_args(annotation)[-1]
        current = annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


# --- YAML -------------------------------------------------------------------------------------
def read_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file; syntax errors (with line and column), non-UTF-8 bytes, duplicate keys and
    unreadable files become one-line ConfigErrors naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror or exc}); check the path and its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          f"save the {what} as UTF-8") from None
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _refuse_duplicate_keys(node, path)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        context = " ".join(str(exc.context).split()) if exc.context and exc.problem else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}{f' ({context})' if context else ''}") from None
    except yaml.reader.ReaderError as exc:
        character = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise ConfigError(f"{path}: not valid YAML: {exc.reason} ({character} at offset {exc.position}); "
                          "remove the character") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"{path}: the YAML is nested too deeply to be a {what}") from None


def _refuse_duplicate_keys(root: yaml.Node, path: Path) -> None:
    """PyYAML lets a repeated key silently win; here it is an error naming both lines."""
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    seen_nodes: set[int] = set()
    while stack:
        node, where = stack.pop()
        if id(node) in seen_nodes:  # aliases (even recursive ones) are visited once
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = (key_node.tag, key_node.value)
                    line = key_node.start_mark.line + 1
                    if key in first_line:
                        raise ConfigError(f"{path}: {_join(where, _key(key_node.value))}: duplicate key at line {line} "
                                          f"(first at line {first_line[key]}); keep one of them")
                    first_line[key] = line
                    stack.append((value_node, _join(where, _key(key_node.value))))
                else:
                    stack.append((value_node, where))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(node.value))


def _kind(value: Any) -> str:
    kinds = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


