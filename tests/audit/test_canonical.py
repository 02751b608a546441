"""RFC 8785 (JCS) canonical form of v2 events, and v1 chains that still verify beside them."""

from __future__ import annotations

import hashlib
import json
import math
import random
import struct

import pytest
import rfc8785
from sqlalchemy import insert

from tether.audit import event as ev
from tether.audit.event import GENESIS_HASH, Event, canonical_json, jcs, jcs_number
from tether.audit.export import to_jsonl
from tether.audit.verify import iter_chain, verify_database
from tether.runtime import Runtime
from tether.store import tables as t
from tether.store.db import Database

from .helpers import build_tree, sql

# RFC 8785 appendix B: IEEE 754 bit patterns and their ECMAScript spelling.
RFC_NUMBERS = [
    (0x0000000000000000, "0"),
    (0x8000000000000000, "0"),
    (0x0000000000000001, "5e-324"),
    (0x8000000000000001, "-5e-324"),
    (0x7FEFFFFFFFFFFFFF, "1.7976931348623157e+308"),
    (0xFFEFFFFFFFFFFFFF, "-1.7976931348623157e+308"),
    (0x4340000000000000, "9007199254740992"),
    (0xC340000000000000, "-9007199254740992"),
    (0x4430000000000000, "295147905179352830000"),
    (0x44B52D02C7E14AF5, "9.999999999999997e+22"),
    (0x44B52D02C7E14AF6, "1e+23"),
    (0x44B52D02C7E14AF7, "1.0000000000000001e+23"),
    (0x444B1AE4D6E2EF4E, "999999999999999700000"),
    (0x444B1AE4D6E2EF4F, "999999999999999900000"),
    (0x444B1AE4D6E2EF50, "1e+21"),
    (0x3EB0C6F7A0B5ED8C, "9.999999999999997e-7"),
    (0x3EB0C6F7A0B5ED8D, "0.000001"),
    (0x41B3DE4355555553, "333333333.3333332"),
    (0x41B3DE4355555554, "333333333.33333325"),
    (0x41B3DE4355555555, "333333333.3333333"),
    (0x41B3DE4355555556, "333333333.3333334"),
    (0x41B3DE4355555557, "333333333.33333343"),
    (0xBECBF647612F3696, "-0.0000033333333333333333"),
    (0x43143FF3C1CB0959, "1424953923781206.2"),
]


def _double(bits: int) -> float:
    value: float = struct.unpack(">d", bits.to_bytes(8, "big"))[0]
    return value


@pytest.mark.parametrize(("bits", "expected"), RFC_NUMBERS, ids=[e for _, e in RFC_NUMBERS])
def test_numbers_follow_rfc8785_appendix_b(bits, expected):
    """Each of the RFC's sample doubles is spelled exactly as the RFC prints it."""
    assert jcs_number(_double(bits)) == expected
    assert jcs(_double(bits)) == expected


def test_keys_sort_by_utf16_code_units():
    """The RFC's sorting example: an astral key sorts before U+FB33 (code-point order would not)."""
    keys = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    doc = json.loads(jcs({k: i for i, k in enumerate(keys)}))
    assert list(doc) == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_strings_are_escaped_as_json_stringify_does():
    """Only ", \\, and controls are escaped (controls as \\b \\f \\n \\r \\t or lowercase \\u00xx)."""
    value = '"\\\b\f\n\r\t\x01\x1f\x7f\u2028é😀/'
    assert jcs(value) == '"\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u001f\x7f\u2028é😀/"'


def test_agrees_with_an_independent_implementation():
    """On random documents and random doubles, `jcs` equals the `rfc8785` package byte for byte."""
    rnd = random.Random(8785)
    for _ in range(3000):
        x = _double(rnd.getrandbits(64))
        if math.isfinite(x):
            assert jcs(x).encode() == rfc8785.dumps(x), repr(x)
    for _ in range(300):
        doc = {
            "".join(rnd.choice("aZ\u00e9\u20ac\ufb33\U0001f600") for _ in range(3)): [
                rnd.random() * 10 ** rnd.randint(-9, 25),
                rnd.randint(-(2**53), 2**53),
                "x\n\u2028" * rnd.randint(0, 2),
                None,
                rnd.random() < 0.5,
                {"n": float(rnd.randint(0, 10**6)), "m": -0.0},
            ]
            for _ in range(4)
        }
        assert jcs(doc).encode() == rfc8785.dumps(doc)


@pytest.mark.parametrize(
    "bad",
    [float("nan"), float("inf"), 2**53 + 1, -(2**53) - 1, "\ud800", {"k": object()}],
    ids=["nan", "inf", "int_above_2_53", "int_below_minus_2_53", "lone_surrogate", "object"],
)
def test_values_outside_i_json_are_refused(bad):
    """NaN, infinities, integers a double cannot hold, lone surrogates and objects raise."""
    with pytest.raises((ValueError, TypeError)):
        jcs(bad)


def test_jcs_event_hash_is_recomputable_from_its_export(runtime, tmp_path):
    """An exported v3 event: drop `hash`, canonicalize with another JCS library, SHA-256 → its hash."""
    build_tree(runtime)
    with runtime.db.read() as conn:
        events = list(iter_chain(conn, runtime.audit.chain_id))
    assert events and {e.v for e in events} == {ev.SCHEMA_VERSION} == {3}
    out = tmp_path / "events.jsonl"
    with out.open("w") as f:
        to_jsonl(events, f)
    for line in out.read_text().splitlines():
        doc = json.loads(line)
        claimed = doc.pop("hash")
        assert hashlib.sha256(rfc8785.dumps(doc)).hexdigest() == claimed


def _v1_rows(chain: str, n: int) -> list[dict]:
    """Events as the 0.1.0 writer stored them: v 1, payload text and hash in the old form."""
    rows, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        # 2.0, 1e16 and an integral ts are where the two forms differ.
        payload = {"version": f"p{seq}", "ratio": 2.0, "big": 1e16, "files": ["a.cedar"]}
        e = Event(
            chain=chain, seq=seq, ts=1_700_000_000.0 + seq, type=ev.POLICY_LOADED, prev_hash=prev,
            payload=payload, v=1,
        )  # fmt: skip
        h = e.compute_hash()
        assert h == hashlib.sha256(canonical_json(e.body()).encode()).hexdigest()
        assert h != hashlib.sha256(jcs(e.body()).encode()).hexdigest()  # the forms really differ
        rows.append({**e.to_dict(), "payload": canonical_json(payload), "hash": h})
        prev = h
    return rows


def _write_v1_chain(url: str, chain: str, n: int) -> None:
    db = Database(url)
    try:
        db.migrate()
        rows = _v1_rows(chain, n)
        with db.begin() as conn:
            conn.execute(insert(t.audit_events), rows)
            conn.execute(
                insert(t.audit_chains).values(
                    chain=chain, head_seq=n, head_hash=rows[-1]["hash"], updated_at=1.0
                )
            )
    finally:
        db.dispose()


def test_chain_written_in_v1_then_current_verifies(settings):
    """A chain begun by 0.1.0 (v1 form) and continued by this version (v3) verifies end to end."""
    _write_v1_chain(settings.store_url, settings.node_id, 3)
    rt = Runtime.start(settings)
    try:
        build_tree(rt)
        with rt.db.read() as conn:
            events = list(iter_chain(conn, rt.audit.chain_id))
        assert [e.v for e in events[:3]] == [1, 1, 1] and {e.v for e in events[3:]} == {3}
        assert events[3].prev_hash == events[2].hash
        assert all(e.compute_hash() == e.hash for e in events)
        report = verify_database(rt.db)
        assert report.ok, report.breaks
    finally:
        rt.close()


def test_edited_v1_event_is_detected(settings):
    """Rewriting a v1 payload (the ratio 2.0 → 3.0) breaks the chain at that seq."""
    _write_v1_chain(settings.store_url, settings.node_id, 3)
    rt = Runtime.start(settings)
    try:
        payload = canonical_json({"version": "p2", "ratio": 3.0, "big": 1e16, "files": ["a.cedar"]})
        sql(
            rt,
            "UPDATE audit_events SET payload = :p WHERE chain = :c AND seq = 2",
            p=payload,
            c=rt.audit.chain_id,
        )
        report = verify_database(rt.db)
        assert not report.ok
        assert (report.breaks[0].kind, report.breaks[0].seq) == ("edited", 2)
    finally:
        rt.close()


def test_v1_event_relabelled_v2_is_detected(settings):
    """Changing an old event's `v` (to have it hashed another way) is itself an edit."""
    _write_v1_chain(settings.store_url, settings.node_id, 2)
    rt = Runtime.start(settings)
    try:
        sql(rt, "UPDATE audit_events SET v = 2 WHERE chain = :c AND seq = 1", c=rt.audit.chain_id)
        report = verify_database(rt.db)
        assert not report.ok and report.breaks[0].seq == 1
    finally:
        rt.close()
