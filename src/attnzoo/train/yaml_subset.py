"""A reader for the small YAML subset the config files use, so configs load without PyYAML.

Supported: nested block mappings by indentation, block lists (``- item``), flow lists and
mappings (``[1, 2]``, ``{name: local, window_size: 16}``), ``#`` comments, plain and quoted
scalars (int, float, true/false, null/~). Anything else (anchors, multi-line strings, tags)
raises ``ValueError`` with the line number; PyYAML is used instead when it is installed.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["parse_yaml"]

_NUMBER = re.compile(r"^[-+]?(\d[\d_]*)?(\.\d*)?([eE][-+]?\d+)?$")


def parse_scalar(text: str) -> Any:
    """``"16" -> 16``, ``"1e-3" -> 0.001``, ``"true" -> True``, ``"null" -> None``, quotes stripped."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("null", "~", ""):
        return None
    if _NUMBER.match(text) and any(c.isdigit() for c in text):
        is_int = re.fullmatch(r"[-+]?\d[\d_]*", text)
        return int(text.replace("_", "")) if is_int else float(text.replace("_", ""))
    return text


def _parse_flow(text: str, pos: int, line: int) -> tuple[Any, int]:
    """Parse one flow value starting at ``text[pos]``; returns ``(value, next position)``."""
    while pos < len(text) and text[pos] == " ":
        pos += 1
    if pos < len(text) and text[pos] in "[{":
        closing = "]" if text[pos] == "[" else "}"
        items: list[Any] = []
        mapping: dict[str, Any] = {}
        pos += 1
        while True:
            while pos < len(text) and text[pos] in " ,":
                pos += 1
            if pos >= len(text):
                raise ValueError(f"line {line}: unclosed {text[pos - 1]!r} in {text!r}")
            if text[pos] == closing:
                return (items if closing == "]" else mapping), pos + 1
            if closing == "}":
                colon = text.index(":", pos)
                key = str(parse_scalar(text[pos:colon]))
                mapping[key], pos = _parse_flow(text, colon + 1, line)
            else:
                value, pos = _parse_flow(text, pos, line)
                items.append(value)
    end = pos
    quote = text[pos] if pos < len(text) and text[pos] in "'\"" else None
    if quote:
        end = text.index(quote, pos + 1) + 1
    else:
        while end < len(text) and text[end] not in ",]}":
            end += 1
    return parse_scalar(text[pos:end]), end


def _value(text: str, line: int) -> Any:
    value, end = _parse_flow(text, 0, line)
    if text[end:].strip():
        raise ValueError(f"line {line}: unexpected text after value: {text[end:]!r}")
    return value


def _strip_comment(raw: str) -> str:
    quote = None
    for i, char in enumerate(raw):
        if char in "'\"":
            quote = None if quote == char else (quote or char)
        elif char == "#" and quote is None and (i == 0 or raw[i - 1] in " \t"):
            return raw[:i].rstrip()
    return raw.rstrip()


def parse_yaml(text: str) -> Any:
    """Parse ``text`` (the subset above) into dicts, lists and scalars.

    Raises:
        ValueError: with the line number, for anything outside the subset.
    """
    lines = [(i + 1, _strip_comment(raw)) for i, raw in enumerate(text.splitlines())]
    lines = [(n, s) for n, s in lines if s.strip() and s.strip() != "---"]
    for n, s in lines:
        if "\t" in s[: len(s) - len(s.lstrip())]:
            raise ValueError(f"line {n}: tabs are not allowed for indentation")
    value, rest = _block(lines, 0, 0)
    if rest < len(lines):
        raise ValueError(f"line {lines[rest][0]}: bad indentation")
    return value


def _block(lines: list[tuple[int, str]], start: int, indent: int) -> tuple[Any, int]:
    """Parse the block starting at ``lines[start]`` whose items are indented by ``indent``."""
    if start >= len(lines):
        return None, start
    is_list = lines[start][1].strip().startswith("- ") or lines[start][1].strip() == "-"
    result: Any = [] if is_list else {}
    i = start
    while i < len(lines):
        number, raw = lines[i]
        current = len(raw) - len(raw.lstrip())
        if current < indent:
            break
        if current > indent:
            raise ValueError(f"line {number}: unexpected indentation")
        body = raw.strip()
        if is_list:
            if not body.startswith("-"):
                raise ValueError(f"line {number}: expected a list item '- ...'")
            item = body[1:].strip()
            if item:
                result.append(_value(item, number))
                i += 1
            else:
                child, i = _block(lines, i + 1, _indent_of(lines, i + 1, indent))
                result.append(child)
            continue
        if ":" not in body or body.startswith("- "):
            raise ValueError(f"line {number}: expected 'key: value', got {body!r}")
        key, _, rest = body.partition(":")
        key = str(parse_scalar(key))
        if rest.strip():
            result[key] = _value(rest.strip(), number)
            i += 1
        else:
            child_indent = _indent_of(lines, i + 1, indent)
            if child_indent <= indent and not (i + 1 < len(lines) and lines[i + 1][1].strip().startswith("- ")):
                result[key] = None
                i += 1
            else:
                result[key], i = _block(lines, i + 1, child_indent)
    return result, i


def _indent_of(lines: list[tuple[int, str]], index: int, default: int) -> int:
    if index >= len(lines):
        return default
    raw = lines[index][1]
    return len(raw) - len(raw.lstrip())
