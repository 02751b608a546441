"""OpenTelemetry export: one trace per root task, a span per task, decision and call.

Built with the OpenTelemetry SDK (the ``otel`` extra), so what leaves is whatever the
configured exporter makes of real SDK spans: OTLP/HTTP to a collector, a JSON-lines
file, or an in-memory exporter in tests.

* trace id  = first 16 bytes of sha256(root task id): exporting twice gives the same
  trace, so a collector de-duplicates and other systems can link to it
* task span = from ``task.opened`` to its end event (or its last event), child of the
  parent task's span; approvals, credentials, delegations and the end are span events
* decision span = zero-length at the decision, status ERROR when denied
* call span = ``call.forwarded`` → matching ``call.result`` (same decision id)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import IO, Any

from tether.audit import event as ev
from tether.audit.event import Event
from tether.audit.trace import Trace, TraceTask, assemble
from tether.errors import ConfigError

try:
    from opentelemetry import trace as otel_trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.id_generator import IdGenerator
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigError(
        "OpenTelemetry export needs the `otel` extra: pip install 'tether[otel]'", code="otel_unavailable"
    ) from exc


def _id(value: str, bits: int) -> int:
    n = int.from_bytes(hashlib.sha256(value.encode()).digest()[: bits // 8], "big")
    return n or 1  # the all-zero id is invalid in OTel


class _FixedIds(IdGenerator):
    """Hands out the ids we set next: spans get stable ids derived from audit ids."""

    def __init__(self) -> None:
        self.trace_id = 1
        self.span_id = 1

    def generate_span_id(self) -> int:
        return self.span_id

    def generate_trace_id(self) -> int:
        return self.trace_id


class JsonLinesSpanExporter(SpanExporter):
    """Writes each span as one line of the SDK's JSON (``ReadableSpan.to_json``)."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for s in spans:
            self.out.write(s.to_json(indent=None) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.out.flush()


def otlp_exporter(endpoint: str, headers: dict[str, str] | None = None) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint, headers=headers)


def _ns(ts: float) -> int:
    return int(ts * 1_000_000_000)


def _attrs(e: Event) -> dict[str, Any]:
    a: dict[str, Any] = {
        "tether.audit.chain": e.chain,
        "tether.audit.seq": e.seq,
        "tether.event.type": e.type,
    }
    for k in ("task_id", "decision_id", "lease_id", "agent", "delegator"):
        v = getattr(e, k)
        if v:
            a[f"tether.{k}"] = v
    for k in ("action", "resource", "outcome", "policy_version", "code", "approval_id", "kind", "audience"):
        v = e.payload.get(k)
        if isinstance(v, str | int | float | bool):
            a[f"tether.{k}"] = v
    return a


def export_spans(events: Iterable[Event], exporter: SpanExporter, *, service_name: str = "tether") -> int:
    """Export the task-bound events as spans; returns the number of spans. Events are
    grouped by root task (all events of one tree must be in ``events``)."""
    trees: dict[str, list[Event]] = {}
    for e in events:
        root = e.root_task_id or e.task_id
        if root:
            trees.setdefault(root, []).append(e)
    ids = _FixedIds()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}), id_generator=ids)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tether.audit")
    count = 0
    try:
        for root_id, evs in trees.items():
            evs.sort(key=lambda e: (e.ts, e.chain, e.seq))
            trace = assemble(root_id, ((e, True) for e in evs))
            ids.trace_id = _id(root_id, 128)
            count += _task_spans(tracer, ids, trace.root, None, trace)
    finally:
        provider.shutdown()
    return count


def _task_spans(tracer: Any, ids: _FixedIds, n: TraceTask, parent: Any, trace: Trace) -> int:
    items = [i.event for i in n.items]
    start = n.opened_at if n.opened_at is not None else (items[0].ts if items else 0.0)
    end = n.ended_at if n.ended_at is not None else max([start, *(e.ts for e in items)])
    ctx = otel_trace.set_span_in_context(parent) if parent is not None else None
    ids.span_id = _id(n.task_id, 64)
    attrs: dict[str, Any] = {
        "tether.task_id": n.task_id,
        "tether.task.state": n.state,
        "gen_ai.operation.name": "invoke_agent",
    }
    for k, v in (
        ("tether.agent", n.agent),
        ("gen_ai.agent.id", n.agent),
        ("tether.delegator", n.delegator),
        ("tether.intent", n.intent),
        ("tether.parent_task_id", n.parent_task_id),
    ):
        if v:
            attrs[k] = v
    span = tracer.start_span(
        f"task {n.intent or n.task_id}",
        context=ctx,
        kind=SpanKind.INTERNAL,
        attributes=attrs,
        start_time=_ns(start),
    )
    count = 1
    child_ctx = otel_trace.set_span_in_context(span)
    results = {e.decision_id: e for e in items if e.type == ev.CALL_RESULT and e.decision_id}
    for e in items:
        if e.type == ev.DECISION:
            ids.span_id = _id(f"{e.chain}:{e.seq}", 64)
            name = f"decision {e.payload.get('action', '')} {e.payload.get('resource', '')}".strip()
            s = tracer.start_span(name, context=child_ctx, attributes=_attrs(e), start_time=_ns(e.ts))
            if e.payload.get("outcome") != "allow":
                s.set_status(Status(StatusCode.ERROR, str(e.payload.get("code") or e.payload.get("outcome"))))
            s.end(end_time=_ns(e.ts))
            count += 1
        elif e.type == ev.CALL_FORWARDED:
            res = results.get(e.decision_id or "")
            ids.span_id = _id(f"{e.chain}:{e.seq}", 64)
            attrs = _attrs(e)
            if str(e.payload.get("resource", "")).startswith("tool:") or e.payload.get("tool"):
                attrs["gen_ai.operation.name"] = "execute_tool"
            name = f"call {e.payload.get('resource') or e.payload.get('target') or ''}".strip()
            s = tracer.start_span(
                name, context=child_ctx, kind=SpanKind.CLIENT, attributes=attrs, start_time=_ns(e.ts)
            )
            if res is not None:
                status = res.payload.get("status")
                if isinstance(status, int):
                    s.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        s.set_status(Status(StatusCode.ERROR, str(status)))
            s.end(end_time=_ns(res.ts if res is not None else e.ts))
            count += 1
        elif e.type not in (ev.TASK_OPENED, ev.CALL_RESULT):
            span.add_event(e.type, attributes=_attrs(e), timestamp=_ns(e.ts))
    for c in n.children:
        count += _task_spans(tracer, ids, c, span, trace)
    if n.state == "revoked":
        span.set_status(Status(StatusCode.ERROR, "revoked"))
    span.end(end_time=_ns(end))
    return count
