"""OpenTelemetry traces of the request path: an authorize span, child spans for the
policy decision, the store read of the task and the connector's mint.

Off unless ``tracing.otlp_endpoint`` is set (then spans go to that OTLP/HTTP endpoint in
batches, from a background thread). The server span joins the caller's W3C
``traceparent``, so an agent's own trace continues through the broker. With tracing off
every hook is one attribute check: :func:`span` hands back a shared no-op context.

The tracer is per process, like OpenTelemetry's own provider; :func:`install` with an
``exporter`` is how tests capture spans in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from tether.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

    from tether.config import Settings

_tracer: Tracer | None = None
_NULL: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()


def span(name: str) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one (no-op when tracing is off)."""
    if _tracer is None:
        return _NULL
    return _tracer.start_as_current_span(name)


def annotate(attributes: Mapping[str, str | int | float | bool]) -> None:
    """Set attributes on the current span (the decision's outcome and code, say)."""
    if _tracer is not None:
        from opentelemetry import trace

        trace.get_current_span().set_attributes(dict(attributes))


def install(settings: Settings, exporter: SpanExporter | None = None) -> Callable[[], None] | None:
    """Start tracing when configured (or when given ``exporter``); returns the shutdown."""
    global _tracer
    endpoint = settings.tracing.otlp_endpoint
    if not endpoint and exporter is None:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        raise ConfigError(
            "`tracing.otlp_endpoint` needs the OpenTelemetry SDK: pip install 'tether[otel]'",
            code="config_invalid",
            field="tracing.otlp_endpoint",
        ) from None
    resource = Resource.create(
        {"service.name": settings.tracing.service_name, "service.instance.id": settings.node_id}
    )
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    _tracer = provider.get_tracer("tether")

    def shutdown() -> None:
        global _tracer
        _tracer = None
        provider.shutdown()

    return shutdown


Handler = Callable[[Any], Awaitable[Any]]


def traced(name: str, handler: Handler) -> Handler:
    """Wrap an HTTP handler in a server span that continues the caller's ``traceparent``."""

    async def wrapper(request: Any) -> Any:
        if _tracer is None:
            return await handler(request)
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = TraceContextTextMapPropagator().extract(carrier=dict(request.headers))
        with _tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER) as sp:
            response = await handler(request)
            sp.set_attribute("http.response.status_code", int(response.status_code))
            return response

    return wrapper
