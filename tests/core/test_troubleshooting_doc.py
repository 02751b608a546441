"""docs/troubleshooting.md documents every error code, and only real ones."""

from __future__ import annotations

import re
from pathlib import Path

from tether.errors import ErrorCode

PAGE = Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md"
ROW = re.compile(r"^\| `([a-z0-9_]+)` \|(.+)$", re.MULTILINE)


def _rows() -> dict[str, str]:
    rows: dict[str, str] = {}
    for code, rest in ROW.findall(PAGE.read_text()):
        assert code not in rows, f"`{code}` is documented twice"
        rows[code] = rest
    return rows


def test_every_error_code_has_an_entry():
    """Each ErrorCode member has a row (add one when you add a code: cause and what to do)."""
    missing = sorted(c.value for c in ErrorCode if c.value not in _rows())
    assert missing == [], f"add these codes to docs/troubleshooting.md: {missing}"


def test_the_page_names_no_code_that_does_not_exist():
    """A row for a code that is not an ErrorCode member is stale (renamed or a typo)."""
    known = {c.value for c in ErrorCode}
    assert sorted(set(_rows()) - known) == []


def test_every_entry_says_what_to_do():
    """Each row has its columns filled: where, cause and what to do (or meaning)."""
    for code, rest in _rows().items():
        cells = [c.strip() for c in rest.strip().rstrip("|").split("|")]
        assert len(cells) >= 2 and all(cells), code
