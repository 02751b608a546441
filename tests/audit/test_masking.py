"""Masking: secrets never reach the database, the exports or the logs."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from sqlalchemy import text

from tether.audit import event as ev
from tether.audit.export import to_jsonl, to_ocsf_lines
from tether.audit.masking import MASK, Masker, mask_digest
from tether.audit.otel import JsonLinesSpanExporter, export_spans
from tether.audit.verify import iter_chain
from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.runtime import Runtime
from tether.store.tables import metadata
from tether.testing import make_settings

from .helpers import DELEGATOR, emit_as, grants, workload

MARK = "c4n4ry"  # every planted secret contains this; it must appear nowhere
AUDIT_CONFIG = """
[audit]
mask_paths = ["request.body.card", "arguments.*.ssn"]
mask_headers = ["X-Tenant-Key"]
mask_patterns = ["acct-[0-9]{6}-c4n4ry"]
"""


@pytest.fixture
def masked_rt(tmp_path, store_url, domain):
    settings = make_settings(
        tmp_path / "state",
        store_url=store_url,
        domain=domain,
        overrides={"environment": "prod"},
        config_extra=AUDIT_CONFIG,
    )
    rt = Runtime.start(settings)
    yield rt
    rt.close()


def plant(rt: Runtime) -> None:
    """Put the canary everywhere a careless caller might: keys, headers, paths, text, URLs."""
    opened = rt.broker.open_task(
        workload("orchestrator"),
        OpenTaskRequest(
            intent="billing.refund",
            description="refund",
            scope=grants(("read", "billing.invoices")),
            ttl_seconds=300,
            delegator=DELEGATOR,
        ),
    )
    # through the real broker: a secret in the query string of a forwarded request
    rt.broker.authorize(
        opened.token,
        AuthorizeRequest(
            "read", "billing.invoices", method="GET", path=f"/invoices?access_token={MARK}-q1&page=2"
        ),
    )
    masker = rt.masker
    masker.register_secret(f"upstream-{MARK}-inject")  # what the inject connector hands over
    emit_as(
        rt,
        ev.CALL_FORWARDED,
        opened.task.id,
        {
            "client_secret": f"{MARK}-k1",
            "nested": {"db_password": f"{MARK}-k2", "ok": "visible"},
            "headers": {"Authorization": f"Bearer {MARK}-h1", "X-Tenant-Key": f"{MARK}-h2", "Accept": "json"},
            "raw_headers": [["cookie", f"sid={MARK}-h3"]],
            "request": {"body": {"card": f"4111-{MARK}", "amount": 5}},
            "arguments": [{"ssn": f"{MARK}-p1"}, {"ssn": f"{MARK}-p2"}],
            "note": f"customer acct-123456-{MARK} asked; upstream said upstream-{MARK}-inject",
            "jwt_in_text": "sent eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c4n4ry_sig_c4n4ry",
        },
    )


def test_canary_secret_never_reaches_database_exports_or_logs(masked_rt, caplog, tmp_path):
    """A planted canary appears in no table, no JSONL/OCSF/OTel export and no log line."""
    caplog.set_level(logging.DEBUG)
    plant(masked_rt)
    with masked_rt.db.engine.connect() as conn:
        dump = "\n".join(
            str(tuple(r))
            for tbl in metadata.sorted_tables
            if conn.dialect.has_table(conn, tbl.name)
            for r in conn.execute(text(f'SELECT * FROM "{tbl.name}"'))
        )
        with masked_rt.db.read() as rconn:
            events = list(iter_chain(rconn, masked_rt.audit.chain_id))
    assert MASK in dump and MARK not in dump
    out = io.StringIO()
    to_jsonl(events, out)
    to_ocsf_lines(events, out)
    export_spans(events, JsonLinesSpanExporter(out))
    assert MARK not in out.getvalue()
    assert MARK not in caplog.text
    if masked_rt.db.dialect == "sqlite":  # the raw bytes on disk, WAL included
        masked_rt.close()
        base = Path(masked_rt.settings.store_url.split("///", 1)[1])
        for f in (base, base.with_name(base.name + "-wal")):
            if f.exists():
                assert MARK.encode() not in f.read_bytes()


def test_masked_paths_are_listed_without_values(masked_rt):
    """The payload's `_masked` names what was masked (paths only), and the rest stays readable."""
    plant(masked_rt)
    with masked_rt.db.read() as conn:
        e = [x for x in iter_chain(conn, masked_rt.audit.chain_id) if x.type == ev.CALL_FORWARDED][-1]
    assert e.payload["nested"]["ok"] == "visible" and e.payload["headers"]["Accept"] == "json"
    assert {
        "$.client_secret",
        "$.headers.X-Tenant-Key",
        "$.request.body.card",
        "$.arguments.1.ssn",
        "$.note",
    } <= set(e.payload["_masked"])
    assert e.payload["note"].startswith("customer [masked] asked")


def test_masking_is_covered_by_the_hash_chain(masked_rt):
    """Masking happens before hashing: the stored (masked) events verify."""
    from tether.audit.verify import verify_database

    plant(masked_rt)
    assert verify_database(masked_rt.db).ok


def test_deeply_nested_payload_is_masked_whole_not_recursed_forever():
    """A payload nested beyond the depth limit is cut off with the mask (no recursion error)."""
    deep: dict = {}
    node = deep
    for _ in range(500):
        node["a"] = {}
        node = node["a"]
    node["secret_value"] = MARK
    assert MARK not in str(Masker()("decision", {"x": deep}))


def test_short_registered_secret_is_refused():
    """Registering a tiny 'secret' would shred ordinary text: refused."""
    with pytest.raises(ValueError):
        Masker().register_secret("abc")


def test_masked_values_in_a_decision_input_keep_their_type_and_a_salted_digest():
    """Inside `input`, a masked leaf is {"$masked": type, "digest"}; outside, it is text as before."""
    salt = b"s" * 32
    m = Masker(paths=["arguments.ssn"], salt=salt)
    out = m(
        "decision",
        {
            "api_key": "abc123",
            "input": {
                "call": {"api_key": "abc123", "ssn": "123-45-6789", "n": "5"},
                "principal": {"tags": {"pin_secret": 1234}},
                "context": {"request": {"path": "/x?token=abcdefgh"}},
            },
        },
    )
    assert out["api_key"] == "[masked]"
    call = out["input"]["call"]
    assert call["api_key"] == {"$masked": "String", "digest": mask_digest(salt, "abc123")}
    assert call["ssn"] == {"$masked": "String", "digest": mask_digest(salt, "123-45-6789")}
    assert call["n"] == "5"
    assert out["input"]["principal"]["tags"]["pin_secret"] == {
        "$masked": "Long",
        "digest": mask_digest(salt, 1234),
    }
    path = out["input"]["context"]["request"]["path"]
    assert path == {"$masked": "String", "digest": mask_digest(salt, "/x?token=abcdefgh")}
    assert "$.input.call.ssn" in out["_masked"]


def test_mask_digests_depend_on_the_salt():
    """Another deployment's key gives another digest: guesses cannot be hashed without it."""
    assert mask_digest(b"a" * 32, "1234") != mask_digest(b"b" * 32, "1234")


def test_secret_registered_after_its_text_was_seen_clean_is_still_masked():
    """The masker remembers strings that needed no masking; registering a secret forgets
    them, so a value seen clean before its registration is masked from then on."""
    masker = Masker()
    leaked = "hunter2-upstream-key"
    assert masker("decision", {"note": leaked})["note"] == leaked  # not a secret yet: kept
    masker.register_secret(leaked)
    assert masker("decision", {"note": leaked})["note"] == MASK


def test_default_pattern_is_applied_to_a_string_seen_before_in_another_field():
    """A string remembered as clean in one place is clean everywhere; a secret-looking
    key still masks it (the key rule does not depend on the value)."""
    masker = Masker()
    value = "plain-value-123456"
    assert masker("decision", {"note": value})["note"] == value
    assert masker("decision", {"password": value})["password"] == MASK
