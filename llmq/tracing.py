"""OpenTelemetry tracing, optional: `pip install llmq[otel]` and LLMQ_TRACING=console|otlp.

Without the extra every function here is a cheap no-op; with the extra but LLMQ_TRACING=off the
OpenTelemetry API's own no-op tracer is used. Spans: one per API request, per job (a child of
the request that submitted it: the context travels in the Celery message headers), per pipeline
stage and per provider call. The OTLP exporter reads the standard OTEL_EXPORTER_OTLP_* variables.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, MutableMapping
from typing import Any

log = logging.getLogger(__name__)

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace

    AVAILABLE = True
except ImportError:  # the extra is not installed
    AVAILABLE = False

_configured = False


def configure(mode: str, service: str) -> bool:
    """Install the SDK's tracer provider with the chosen exporter. Returns whether it did."""
    global _configured
    if mode == "off" or _configured:
        return _configured
    if not AVAILABLE:
        log.warning("LLMQ_TRACING=%s needs OpenTelemetry: pip install 'llmq[otel]'", mode)
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
        SpanProcessor,
    )

    processor: SpanProcessor
    if mode == "console":
        processor = SimpleSpanProcessor(ConsoleSpanExporter())
    elif mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    else:
        log.warning("unknown LLMQ_TRACING=%r (off | console | otlp): tracing stays off", mode)
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": f"llmq-{service}"}))
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _configured = True
    return True


@contextlib.contextmanager
def span(name: str, *, kind: str = "internal", **attributes: Any) -> Iterator[Any]:
    """A span around the block (None when tracing is unavailable). Exceptions are recorded."""
    if not AVAILABLE:
        yield None
        return
    span_kind = {
        "server": trace.SpanKind.SERVER,
        "client": trace.SpanKind.CLIENT,
        "consumer": trace.SpanKind.CONSUMER,
    }.get(kind, trace.SpanKind.INTERNAL)
    attrs = {k: v for k, v in attributes.items() if v is not None}
    with trace.get_tracer("llmq").start_as_current_span(
        name, kind=span_kind, attributes=attrs
    ) as current:
        yield current


def set_attributes(current: Any, **attributes: Any) -> None:
    if current is not None:
        for key, value in attributes.items():
            if value is not None:
                current.set_attribute(key, value)


def inject(carrier: MutableMapping[str, Any]) -> None:
    """Write the current trace context (traceparent) into outgoing message headers."""
    if AVAILABLE:
        propagate.inject(carrier)


def attach_from(carrier: Any) -> object | None:
    """Make the trace context found in `carrier` current; returns a token for `detach`."""
    if not AVAILABLE or carrier is None:
        return None
    return otel_context.attach(propagate.extract(carrier))


def detach(token: object | None) -> None:
    if AVAILABLE and token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]
