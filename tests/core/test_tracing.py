"""OpenTelemetry spans of the request path. A real OTLP collector cannot run here: the
spans are captured by the SDK's in-memory exporter instead (what OTLP would send)."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tether import tracing
from tether.testing import make_settings

_SQLITE = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def spans(runtime):
    exporter = InMemorySpanExporter()
    stop = tracing.install(runtime.settings, exporter=exporter)
    assert stop is not None
    yield exporter
    stop()


@_SQLITE
def test_authorize_is_one_server_span_joined_to_the_callers_trace_with_its_steps_as_children(
    spans, runtime, client, make_agent
):
    """The authorize span continues the caller's `traceparent`; the task read, the policy
    decision and the connector's mint are its children; the outcome is an attribute."""
    agent = make_agent("orchestrator")
    tok = agent.open([{"action": "read", "resource": "tickets.queue"}]).json()["task_token"]
    spans.clear()
    r = client.post(
        "/v1/authorize",
        json={"action": "read", "resource": "tickets.queue"},
        headers={"Authorization": f"Bearer {tok}", "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
    )
    assert r.json()["decision"] == "allow"
    by_name = {s.name: s for s in spans.get_finished_spans()}
    root = by_name["tether.authorize"]
    assert format(root.context.trace_id, "032x") == CALLER_TRACE
    assert root.parent is not None and format(root.parent.span_id, "016x") == CALLER_SPAN
    assert root.attributes["tether.decision"] == "allow"
    assert root.attributes["http.response.status_code"] == 200
    for child in ("tether.store.task", "tether.policy", "tether.connector"):
        assert by_name[child].parent.span_id == root.context.span_id, child
        assert by_name[child].context.trace_id == root.context.trace_id


@_SQLITE
def test_a_deny_is_marked_on_the_span_with_its_code(spans, make_agent):
    """An out-of-scope deny: the span says `deny` and `out_of_scope`, and no connector span."""
    agent = make_agent("orchestrator")
    tok = agent.open([{"action": "read", "resource": "tickets.queue"}]).json()["task_token"]
    spans.clear()
    assert agent.authorize(tok, "read", "billing.invoices").json()["code"] == "out_of_scope"
    by_name = {s.name: s for s in spans.get_finished_spans()}
    assert by_name["tether.authorize"].attributes["tether.code"] == "out_of_scope"
    assert "tether.connector" not in by_name


def test_tracing_off_costs_a_shared_no_op(tmp_path):
    """Without an endpoint nothing is installed and every span hook is the same no-op."""
    settings = make_settings(tmp_path / "s")
    assert tracing.install(settings) is None
    assert tracing.span("a") is tracing.span("b")


def test_an_endpoint_is_exported_by_otlp(tmp_path):
    """With `tracing.otlp_endpoint` the OTLP/HTTP exporter is installed (nothing listens
    there in this test; spans would be dropped by the exporter after its retries)."""
    settings = make_settings(
        tmp_path / "s", overrides={"tracing": {"otlp_endpoint": "http://127.0.0.1:9/v1/traces"}}
    )
    stop = tracing.install(settings)
    assert stop is not None and tracing._tracer is not None
    stop()
    assert tracing._tracer is None
