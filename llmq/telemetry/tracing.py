"""OpenTelemetry tracing, optional: `pip install 'llmq[otel]'` and LLMQ_TRACING=console|otlp.

The OpenTelemetry API comes with FastAPI; the extra adds the SDK and the OTLP exporter. Until
`configure` (or the host application) installs a tracer provider, `span` does nothing (and
without the API at all, none of these functions do anything). Spans: one per API request (FastAPI's
native server span), per task and job (children of the request that submitted them: the
context travels in the Celery message headers), per pipeline stage and per provider call. The
OTLP exporter reads the standard OTEL_EXPORTER_OTLP_* variables.
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
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
            SpanProcessor,
        )
    except ImportError:
        log.warning("LLMQ_TRACING=%s needs the OpenTelemetry SDK: pip install 'llmq[otel]'", mode)
        return False

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
    """A span around the block (None when tracing is off). Exceptions are recorded."""
    if not _recording():
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


def _recording() -> bool:
    """Is a tracer provider installed (ours, or one set up by the host application)?

    Without one every span would be the API's no-op span, which still costs a context switch
    and a few objects per call, under every pipeline stage (seen in bench/profile.py)."""
    return AVAILABLE and (
        _configured or not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    )


def current_span() -> Any:
    return trace.get_current_span() if AVAILABLE else None


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
