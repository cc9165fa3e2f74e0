"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from llmq import store
from llmq.resilience.adaptive import learned_views
from llmq.resilience.circuit import CircuitBreaker, circuit_policy
from llmq.workers.heartbeat import live_workers
from llmq.workers.queues import queue_depths

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency or every worker is down"}})
def readyz(request: Request) -> JSONResponse:
    checks: dict[str, Any] = {}
    ok = True
    try:
        store.ping(request.app.state.engine)
        checks["postgres"] = "ok"
    except SQLAlchemyError as exc:
        ok = False
        checks["postgres"] = f"down: {type(exc).__name__}"
    client: redis.Redis = request.app.state.redis
    try:
        client.ping()
        checks["redis"] = "ok"
        checks["queues"] = queue_depths(client)
        breaker = CircuitBreaker(client, circuit_policy(request.app.state.settings))
        checks["circuits"] = {
            link: breaker.state(link) for link in request.app.state.settings.default_chain
        }
        # Learned from the providers' headers: what each provider:model allows and has left.
        checks["rate_limits"] = [view.as_dict() for view in learned_views(client)]
        # Jobs would wait forever with no worker to run them: not ready without one.
        checks["workers"] = [w["name"] for w in live_workers(client)]
        if not checks["workers"]:
            ok = False
    except redis.RedisError as exc:
        ok = False
        checks["redis"] = f"down: {type(exc).__name__}"
    return JSONResponse(
        {"status": "ready" if ok else "not_ready", "checks": checks},
        status_code=200 if ok else 503,
        headers=None if ok else {"Retry-After": "5"},
    )
