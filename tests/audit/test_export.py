"""Exports: OTel spans checked through the SDK types and the OTLP protobuf encoder, OCSF
events against the shipped JSON Schema (written from the OCSF API Activity class), JSONL
re-verified."""

from __future__ import annotations

import io
import json
from importlib import resources

import jsonschema
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tether.audit import event as ev
from tether.audit.event import Event
from tether.audit.export import to_jsonl, to_ocsf
from tether.audit.otel import JsonLinesSpanExporter, _id, export_spans
from tether.audit.verify import iter_chain
from tether.broker import AuthorizeRequest

from .helpers import build_tree


def events_of(rt):
    with rt.db.read() as conn:
        return list(iter_chain(conn, rt.audit.chain_id))


def test_otel_export_makes_one_trace_per_root_task_with_nested_task_spans(runtime):
    """One trace id (derived from the root task) and task spans nested root → child → grandchild."""
    tree = build_tree(runtime)
    mem = InMemorySpanExporter()
    n = export_spans(events_of(runtime), mem)
    spans = mem.get_finished_spans()
    assert n == len(spans) and all(isinstance(s, ReadableSpan) for s in spans)
    mine = [s for s in spans if s.context.trace_id == _id(tree.root, 128)]
    tasks = {s.attributes["tether.task_id"]: s for s in mine if s.name.startswith("task ")}
    assert tasks[tree.root].parent is None
    assert tasks[tree.child].parent.span_id == tasks[tree.root].context.span_id
    assert tasks[tree.grandchild].parent.span_id == tasks[tree.child].context.span_id


def test_otel_decision_and_call_spans_carry_outcome_and_duration(runtime):
    """Decision spans hang under their task; a deny is ERROR; a call spans forwarded → result."""
    tree = build_tree(runtime)
    runtime.broker.authorize(
        tree.tokens["grand"], AuthorizeRequest("read", "billing.invoices")
    )  # task closed: deny
    events = events_of(runtime)
    mem = InMemorySpanExporter()
    export_spans(events, mem)
    spans = mem.get_finished_spans()
    child_span = next(
        s for s in spans if s.attributes.get("tether.task_id") == tree.child and s.name.startswith("task ")
    )
    refund = next(
        s
        for s in spans
        if s.name == "decision tool:call billing.refund" and s.attributes["tether.outcome"] == "allow"
    )
    assert refund.parent.span_id == child_span.context.span_id
    deny = next(s for s in spans if s.attributes.get("tether.outcome") == "deny")
    assert deny.status.status_code is StatusCode.ERROR
    call = next(s for s in spans if s.name.startswith("call "))
    fwd = next(e for e in events if e.type == ev.CALL_FORWARDED)
    res = next(e for e in events if e.type == ev.CALL_RESULT)
    assert call.end_time - call.start_time == int(res.ts * 1e9) - int(fwd.ts * 1e9)
    assert call.attributes["gen_ai.operation.name"] == "execute_tool"


def test_otel_spans_encode_as_an_otlp_request(runtime):
    """The spans encode into an OTLP ExportTraceServiceRequest (the wire schema a collector reads)."""
    build_tree(runtime)
    mem = InMemorySpanExporter()
    export_spans(events_of(runtime), mem)
    req = encode_spans(mem.get_finished_spans())
    encoded = [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(encoded) == len(mem.get_finished_spans())
    resource = {a.key: a.value.string_value for a in req.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "tether"
    assert type(req).FromString(req.SerializeToString()) == req


def test_otel_export_is_deterministic(runtime):
    """Exporting twice yields the same trace and span ids (collectors de-duplicate)."""
    build_tree(runtime)
    events = events_of(runtime)
    a, b = io.StringIO(), io.StringIO()
    export_spans(events, JsonLinesSpanExporter(a))
    export_spans(events, JsonLinesSpanExporter(b))
    ids = [
        [
            (j["context"]["trace_id"], j["context"]["span_id"])
            for j in map(json.loads, x.getvalue().splitlines())
        ]
        for x in (a, b)
    ]
    assert ids[0] == ids[1] and ids[0]


def test_ocsf_events_validate_against_the_api_activity_schema(runtime):
    """Every event of a real flow maps to a valid OCSF API Activity (6003) record."""
    build_tree(runtime)
    schema = json.loads((resources.files("tether.audit") / "ocsf_api_activity.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for e in events_of(runtime):
        validator.validate(to_ocsf(e))


def test_ocsf_decision_carries_authorization_outcome(runtime):
    """A deny maps to status Failure, the decision in `actor.authorizations`, the delegator as user."""
    tree = build_tree(runtime)
    runtime.broker.authorize(tree.tokens["grand"], AuthorizeRequest("read", "billing.invoices"))
    deny = next(e for e in reversed(events_of(runtime)) if e.type == ev.DECISION)
    o = to_ocsf(deny)
    assert (o["class_uid"], o["status_id"], o["type_uid"]) == (6003, 2, 600399)
    assert o["actor"]["authorizations"][0]["decision"] == "deny"
    assert o["actor"]["user"]["uid"].endswith("#alice@example.com")
    assert (
        o["actor"]["session"]["uid"] == tree.grandchild and o["status_code"] == "task_not_active"
    )  # the tree was closed


def test_ocsf_schema_rejects_a_record_without_actor():
    """The OCSF schema is strict about required attributes (an event without `actor` fails)."""
    schema = json.loads((resources.files("tether.audit") / "ocsf_api_activity.schema.json").read_text())
    e = Event(chain="n", seq=1, ts=1.0, type=ev.POLICY_LOADED, prev_hash="0" * 64, payload={"version": "v"})
    o = to_ocsf(e)
    del o["actor"]
    assert not jsonschema.Draft202012Validator(schema).is_valid(o)


def test_jsonl_export_is_reverifiable(runtime):
    """Each exported line re-hashes to its own `hash` and links to the previous line."""
    build_tree(runtime)
    out = io.StringIO()
    to_jsonl(events_of(runtime), out)
    prev = "0" * 64
    for line in out.getvalue().splitlines():
        e = Event(**json.loads(line))
        assert e.prev_hash == prev and e.compute_hash() == e.hash
        prev = e.hash
