"""Strict SPIFFE ID parsing (SPIFFE-ID specification, section 2)."""

from __future__ import annotations

import pytest

from tether.errors import InvalidRequest
from tether.identity import SpiffeId, parse_spiffe_id, valid_trust_domain


@pytest.mark.parametrize(
    ("value", "td", "path"),
    [
        ("spiffe://example.org/ns/prod/sa/agent", "example.org", "/ns/prod/sa/agent"),
        ("spiffe://tether.local/Agent_1.v2-x", "tether.local", "/Agent_1.v2-x"),
        ("spiffe://td_1-2.x/a/.../b", "td_1-2.x", "/a/.../b"),
        ("spiffe://example.org", "example.org", ""),
    ],
)
def test_valid_ids_parse_and_round_trip(value: str, td: str, path: str) -> None:
    """Valid IDs split into trust domain and path, and str() gives the input back."""
    sid = parse_spiffe_id(value)
    assert sid == SpiffeId(td, path)
    assert str(sid) == value
    assert sid.is_trust_domain_id is (path == "")


def test_id_of_exactly_2048_bytes_is_valid() -> None:
    """2048 bytes is the limit, inclusive."""
    prefix = "spiffe://example.org/"
    value = prefix + "a" * (2048 - len(prefix))
    assert str(parse_spiffe_id(value)) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "example.org/workload",
        "https://example.org/workload",
        "SPIFFE://example.org/workload",
        "Spiffe://example.org/workload",
        "spiffe:/example.org/workload",
        "spiffe:///workload",
        "spiffe://example.org:8443/workload",
        "spiffe://user@example.org/workload",
        "spiffe://user:pw@example.org/workload",
        "spiffe://example.org/workload?x=1",
        "spiffe://example.org/workload#frag",
        "spiffe://example.org?x=1",
        "spiffe://Example.org/workload",
        "spiffe://exa mple.org/workload",
        "spiffe://exämple.org/workload",
        "spiffe://example.org/",
        "spiffe://example.org/workload/",
        "spiffe://example.org//workload",
        "spiffe://example.org/a/./b",
        "spiffe://example.org/a/../b",
        "spiffe://example.org/..",
        "spiffe://example.org/a%2Fb",
        "spiffe://example.org/a b",
        "spiffe://example.org/a\x00b",
        "spiffe://example.org/a\\b",
        "spiffe://example.org/" + "a" * 2048,
        "spiffe://" + "a" * 256 + "/x",
    ],
)
def test_invalid_ids_rejected(value: str) -> None:
    """Scheme case, userinfo, port, query, fragment, bad chars, dot segments, length."""
    with pytest.raises(InvalidRequest) as info:
        parse_spiffe_id(value)
    assert info.value.code == "invalid_spiffe_id"


def test_length_counts_bytes_not_characters() -> None:
    """The 2048 limit is in UTF-8 bytes, checked before anything else."""
    with pytest.raises(InvalidRequest) as info:
        parse_spiffe_id("spiffe://example.org/" + "é" * 1100)
    assert info.value.code == "invalid_spiffe_id"


def test_non_string_rejected() -> None:
    """A non-string value is invalid_spiffe_id, not a TypeError."""
    with pytest.raises(InvalidRequest) as info:
        parse_spiffe_id(b"spiffe://example.org/x")  # type: ignore[arg-type]
    assert info.value.code == "invalid_spiffe_id"


def test_message_escapes_control_characters() -> None:
    """Echoed input is bounded and control characters are escaped (no log injection)."""
    with pytest.raises(InvalidRequest) as info:
        parse_spiffe_id("spiffe://example.org/a\nFAKE LOG LINE")
    assert "\n" not in info.value.message


@pytest.mark.parametrize(
    ("td", "ok"),
    [
        ("example.org", True),
        ("tether.local", True),
        ("a_b-c.9", True),
        ("x", True),
        ("", False),
        ("Example.org", False),
        ("example.org:80", False),
        ("spiffe://example.org", False),
        ("example.org/x", False),
        ("a" * 256, False),
        ("a" * 255, True),
    ],
)
def test_valid_trust_domain(td: str, ok: bool) -> None:
    """valid_trust_domain accepts lowercase names up to 255 bytes, nothing else."""
    assert valid_trust_domain(td) is ok
