"""Source positions in Cedar text, which cedarpy does not report.

cedarpy's parse errors carry no span (``unexpected token `)```), and its JSON form of a
policy has no positions either. Two small tools put a line and a column on both:

* :func:`locate_syntax_error` finds the offending token by asking Cedar itself: a prefix
  of a statement that Cedar rejects only with "unexpected end of input" can still be
  completed, and the first token whose prefix is rejected otherwise is the one at
  fault. This runs only on the error path, one parse per token of one statement.
* :func:`find_literal` finds where an entity reference or a string literal is written,
  so that analysis warnings point at the word a reader has to fix.

Both skip ``//`` comments and read string escapes the way Cedar does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cedarpy

__all__ = ["Position", "find_literal", "locate_syntax_error", "position_at", "tokens"]

_END_OF_INPUT = "unexpected end of input"
# Locating costs one parse per token; past this many tokens the statement start will do.
_MAX_SCAN = 2000
_PUNCT2 = ("::", "==", "!=", "<=", ">=", "&&", "||")
_BACKTICKED = re.compile(r"`([^`]+)`")
_TRAILING_WORD = re.compile(r":\s*([^\s:`]+)\s*$")


@dataclass(frozen=True, slots=True)
class Position:
    """1-based line and column of a character of a file."""

    line: int
    column: int


def position_at(text: str, offset: int) -> Position:
    """The line and column of ``text[offset]``."""
    line = text.count("\n", 0, offset) + 1
    start = text.rfind("\n", 0, offset) + 1
    return Position(line, offset - start + 1)


def tokens(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of each token of Cedar ``text``, comments and blanks left out.

    A token is a string literal (an unterminated one runs to the end), a name or number,
    a two-character operator, or any other single character.
    """
    out: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif text.startswith("//", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl + 1
        elif ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append((i, min(j + 1, n)))
            i = j + 1
        elif ch.isalnum() or ch == "_":
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            out.append((i, j))
            i = j
        else:
            j = i + (2 if text[i : i + 2] in _PUNCT2 else 1)
            out.append((i, j))
            i = j
    return out


def _error(text: str) -> str | None:
    try:
        cedarpy.PolicySet.from_str(text)
    except ValueError as exc:
        return str(exc)
    return None


def _viable(text: str) -> bool:
    """True when ``text`` parses or could still be completed into something that does."""
    err = _error(text)
    return err is None or err == _END_OF_INPUT


def locate_syntax_error(text: str, message: str) -> int | None:
    """Offset in ``text`` (one statement, or a whole file) of the token Cedar's parse
    error ``message`` is about; ``None`` when it cannot be told."""
    toks = tokens(text)
    if toks and message == _END_OF_INPUT:
        return toks[-1][1]  # just after the last token: where the rest was expected
    if toks and not _viable(text[: toks[-1][1]]):
        # The first token whose prefix cannot be completed any more. A scan, not a
        # bisection: Cedar's parser recovers from errors, so a longer prefix can look
        # viable again (`… "read" resource)` reads as merely unfinished).
        for start, end in toks[:_MAX_SCAN]:
            found = _error(text[:end])
            if found is None or found == _END_OF_INPUT:
                continue
            # A grammar error names the token ("unexpected token `)`"); an error found
            # only once the statement is whole (an unknown method) names something else.
            if found.startswith("unexpected token") or found == "invalid token":
                return start
            break
    # Fall back to the words the message quotes, first occurrence outside comments.
    wanted = _BACKTICKED.findall(message) + _TRAILING_WORD.findall(message)
    for word in wanted:
        offset = _find_code(text, word)
        if offset is not None:
            return offset
    return None


def _find_code(text: str, needle: str) -> int | None:
    """First offset of ``needle`` that does not start inside a ``//`` comment."""
    start = 0
    while True:
        at = text.find(needle, start)
        if at < 0:
            return None
        line_start = text.rfind("\n", 0, at) + 1
        if "//" not in _outside_strings(text[line_start:at]):
            return at
        start = at + 1


def _outside_strings(fragment: str) -> str:
    """``fragment`` with string literals blanked, so a ``//`` inside a string is not a comment."""
    return re.sub(r'"(?:[^"\\]|\\.)*"?', '""', fragment)


def find_literal(text: str, start: int, end: int, entity_type: str | None, value: str) -> int | None:
    """Offset of the first reference to ``entity_type::"value"`` (or of the string
    literal ``"value"`` when ``entity_type`` is None) in ``text[start:end]``.

    ``entity_type`` is the base name (``Tool``); a namespace before it is allowed, as
    is blank space around ``::``.
    """
    quoted = re.escape('"' + _escape(value) + '"')
    if entity_type is None:
        pattern = re.compile(quoted)
    else:
        pattern = re.compile(rf"(?:\w+\s*::\s*)*\b{re.escape(entity_type)}\s*::\s*{quoted}")
    for m in pattern.finditer(text, start, end):
        line_start = text.rfind("\n", 0, m.start()) + 1
        if "//" not in _outside_strings(text[line_start : m.start()]):
            return m.start()
    return None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
