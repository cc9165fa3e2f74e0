"""Request-scoped observability: a request id on every request (taken from X-Request-ID or
made here, returned in the response header, bound to every log record and carried to the
workers in message headers), one log line per request, and GET /metrics. Request spans are
FastAPI's own (native OpenTelemetry support); the request id is added to them."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmq.cost.pricing import load_price_table
from llmq.resilience.circuit import CircuitBreaker, circuit_policy
from llmq.settings import Settings
from llmq.telemetry import logs, metrics, tracing
from llmq.workers.queues import queue_depths

log = logging.getLogger("llmq.api")

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is kept only if it is short and plain: it ends up in logs and headers.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name.lower() == b"x-request-id":
            candidate = value.decode("latin-1").strip()
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


class RequestContext:
    """Pure ASGI middleware (no body buffering, so streaming responses stay streams)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers", []))
        state = scope.setdefault("state", {})  # shared with the handlers (request.state)
        started = time.perf_counter()
        status = 500
        method = scope.get("method", "")

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        # FastAPI's native OpenTelemetry server span (when tracing is on) is current here.
        tracing.set_attributes(tracing.current_span(), request_id=request_id)
        with logs.bound(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                elapsed = time.perf_counter() - started
                metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
                metrics.HTTP_DURATION.labels(method, route).observe(elapsed)
                if route != "/metrics":  # scrapes every few seconds would drown the log
                    log.info(
                        "%s %s %d",
                        method,
                        route,
                        status,
                        extra={
                            "method": method,
                            "route": route,
                            "status": status,
                            "latency_ms": round(elapsed * 1000, 3),
                            "tenant": state.get("tenant"),
                        },
                    )


router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, include_in_schema=False)
def metrics_endpoint(request: Request) -> Response:
    """Prometheus text format: this process's counters plus state read at scrape time."""
    body = generate_latest(REGISTRY) + generate_latest(request.app.state.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def circuit_links(settings: Settings) -> list[str]:
    """The links whose circuit state is exported: the default chain and every priced model
    (read one by one, so no SCAN of a keyspace that holds the cache)."""
    prices = load_price_table(settings.pricing_file)
    return sorted({*settings.default_chain, *prices.models})


def install(app: FastAPI) -> None:
    settings = app.state.settings
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        metrics.StateCollector(
            app.state.engine,
            app.state.redis,
            CircuitBreaker(app.state.redis, circuit_policy(settings)),
            circuit_links(settings),
            queue_depths,
            settings.metrics_cache_s,
        )
    )
    app.state.metrics_registry = registry
    app.add_middleware(RequestContext)
    app.include_router(router)


def record_tenant(request: Request, tenant: Any) -> None:
    """Name the caller's tenant in the request's closing log line."""
    request.state.tenant = str(tenant)
