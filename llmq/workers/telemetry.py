"""Worker-side observability: JSON logs via Celery's setup_logging signal, the request id and
trace context carried in message headers (API -> broker -> worker), and the per-process
/metrics exporter. (Heartbeats: llmq/workers/heartbeat.py.)"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from celery.signals import setup_logging

from llmq.settings import get_settings
from llmq.telemetry import logs, tracing

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "llmq_request_id"

_metrics_server: Any = None


@setup_logging.connect
def _configure_logging(loglevel: Any = None, **_: Any) -> None:
    # Connecting this signal stops Celery from installing its own handlers on the root logger.
    settings = get_settings()
    level = logging.getLevelName(loglevel) if isinstance(loglevel, int) else loglevel
    logs.configure(settings, "worker", level or None)
    tracing.configure(settings.tracing, "worker")


def outgoing_headers() -> dict[str, Any]:
    """Headers for a message published now: the request id and trace context in effect."""
    headers: dict[str, Any] = {}
    request_id = logs.current().get("request_id")
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    tracing.inject(headers)
    return headers


@contextlib.contextmanager
def consuming(request: Any, task: str) -> Iterator[None]:
    """Run a task body under the request id and trace context its message carried."""
    token = tracing.attach_from(request)
    try:
        with (
            logs.bound(request_id=request.get(REQUEST_ID_HEADER), task_id=request.id),
            tracing.span(f"llmq.task.{task}", kind="consumer", task_id=request.id),
        ):
            yield
    finally:
        tracing.detach(token)


def start_metrics_server(port: int, host: str) -> None:
    """Serve this process's metrics (the default registry) on host:port, once."""
    global _metrics_server
    if port <= 0 or _metrics_server is not None:
        return
    from prometheus_client import start_http_server

    try:
        _metrics_server = start_http_server(port, addr=host)
    except OSError as exc:  # port taken: the worker still works, unobserved
        log.error("cannot serve metrics on %s:%d: %s", host, port, exc)
        return
    log.info("worker metrics on http://%s:%d/metrics", host, port)
