"""GET /v1/batches/{id}/events and /v1/jobs/{id}/events: Server-Sent Events until the end.

Each event has an id (1, 2, ... per stream; a reconnect with Last-Event-ID continues the count),
a name and JSON data. Batch streams send `progress` (counts) and end with `completed` (or
`cancelled`); job streams send `status` and end with `done`. The state always comes from
Postgres.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import Engine

from llmq import store
from llmq.settings import Settings
from llmq.store.models import TERMINAL_STATUSES
from llmq.telemetry import events

from ..deps import EngineDep, PrincipalDep, SettingsDep
from ..errors import ApiError
from ..schemas import ErrorOut
from .jobs import parse_id

router = APIRouter(tags=["events"])
SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}},
    401: {"model": ErrorOut},
    404: {"model": ErrorOut},
}
BATCH_FINAL = ("completed", "cancelled")
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID")]


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def batch_state(engine: Engine, tenant_id: uuid.UUID, batch_id: uuid.UUID) -> dict[str, Any]:
    batch = store.get_batch(engine, tenant_id, batch_id) or {}
    keep = ("status", "item_count", "completed", "counts", "input_tokens", "output_tokens")
    state = {k: batch.get(k) for k in keep}
    state.update(id=str(batch_id), cost_usd=_plain(batch.get("cost_usd")))
    return state


def job_state(engine: Engine, tenant_id: uuid.UUID, job_id: uuid.UUID) -> dict[str, Any]:
    job = store.get_job(engine, tenant_id, job_id) or {}
    keep = ("status", "attempts_made", "provider", "model", "error_code", "error_message")
    state = {k: _plain(job.get(k)) for k in keep}
    state["id"] = str(job_id)
    return state


def _first_id(last_event_id: str | None) -> int:
    try:
        return int(last_event_id) + 1 if last_event_id else 1
    except ValueError:
        return 1


def _stream(
    settings: Settings,
    channel: str,
    read: Any,
    is_final: Any,
    names: tuple[str, str | None],
    first_id: int,
) -> StreamingResponse:
    async def read_state() -> dict[str, Any] | None:
        return await run_in_threadpool(read)

    async def body() -> AsyncIterator[str]:
        event_id = first_id
        states = events.watch_states(
            settings.redis_url or "redis://127.0.0.1:6379/0",
            channel,
            read_state,
            is_final,
            snapshot_interval_s=settings.events_snapshot_interval_s,
            keepalive_s=settings.events_keepalive_s,
        )
        async for state in states:
            if state is None:
                yield events.KEEPALIVE
                continue
            name = (names[1] or state["status"]) if is_final(state) else names[0]
            yield events.format_sse(event_id, name, state)
            event_id += 1

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/v1/batches/{batch_id}/events", responses=SSE_RESPONSES)
def batch_events(
    batch_id: str,
    engine: EngineDep,
    settings: SettingsDep,
    who: PrincipalDep,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    """`progress` on every change of the counts, then `completed` (or `cancelled`); the stream
    then ends."""
    batch_uuid = parse_id(batch_id, "batch")
    if store.get_batch_owner(engine, batch_uuid) != who.tenant_id:
        raise ApiError(404, "not_found", f"batch {batch_id} not found")
    return _stream(
        settings,
        events.batch_channel(batch_uuid),
        lambda: batch_state(engine, who.tenant_id, batch_uuid),
        lambda state: state["status"] in BATCH_FINAL,
        ("progress", None),  # the last event is named by the final state
        _first_id(last_event_id),
    )


@router.get("/v1/jobs/{job_id}/events", responses=SSE_RESPONSES)
def job_events(
    job_id: str,
    engine: EngineDep,
    settings: SettingsDep,
    who: PrincipalDep,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    """`status` on every state change, then `done` with the terminal state; the stream ends."""
    job_uuid = parse_id(job_id, "job")
    if store.get_job(engine, who.tenant_id, job_uuid) is None:
        raise ApiError(404, "not_found", f"job {job_id} not found")
    return _stream(
        settings,
        events.job_channel(job_uuid),
        lambda: job_state(engine, who.tenant_id, job_uuid),
        lambda state: state["status"] in TERMINAL_STATUSES,
        ("status", "done"),
        _first_id(last_event_id),
    )
