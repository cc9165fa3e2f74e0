"""GET /v1/admin/audit: the audit log, newest first, for holders of an admin key. Reading it
is itself recorded (`admin.audit_read`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from llmq import store

from ..deps import EngineDep
from ..errors import ApiError
from ..schemas import AuditEventOut, AuditPage, error_responses
from .admin import AdminDep

router = APIRouter(prefix="/v1/admin/audit", tags=["admin"])
ERRORS = error_responses(401, 403, 422, 429)


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(
            422, "invalid_request", f"query.{name}: not an ISO 8601 time: {value!r}"
        ) from None
    if parsed.tzinfo is None:
        raise ApiError(
            422, "invalid_request", f"query.{name}: give a time zone (e.g. 2026-01-01T00:00:00Z)"
        )
    return parsed


@router.get("", response_model=AuditPage, responses=ERRORS)
def list_audit(
    engine: EngineDep,
    who: AdminDep,
    action: Annotated[str | None, Query(description="exact, or a family: admin.*")] = None,
    tenant_id: Annotated[str | None, Query(description="tenant id")] = None,
    since: Annotated[str | None, Query(description="ISO 8601, inclusive")] = None,
    until: Annotated[str | None, Query(description="ISO 8601, exclusive")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    if (
        action is not None
        and action.rstrip("*")
        and not any(
            a.startswith(action[:-1]) if action.endswith("*") else a == action
            for a in store.ACTIONS
        )
    ):
        raise ApiError(
            422, "invalid_request",
            f"query.action: unknown action {action!r}; use one of "
            + ", ".join(sorted(store.ACTIONS)),
        )  # fmt: skip
    try:
        tenant = uuid.UUID(tenant_id) if tenant_id is not None else None
    except ValueError:
        raise ApiError(
            422, "invalid_request", f"query.tenant_id: not a tenant id: {tenant_id!r}"
        ) from None
    start, end = _time(since, "since"), _time(until, "until")
    try:
        before = store.decode_cursor(cursor) if cursor is not None else None
    except store.CursorError as exc:
        raise ApiError(422, "invalid_request", f"query.cursor: {exc}") from None
    store.record_event(
        engine,
        store.AuditEvent(str(who.key_id), "admin.audit_read", None, None, {
            "action": action, "tenant_id": tenant_id, "since": since, "until": until,
            "page": cursor is not None,
        }),
    )  # fmt: skip
    rows = store.list_events(
        engine, action=action, tenant_id=tenant, since=start, until=end, before_id=before,
        limit=limit + 1,
    )  # fmt: skip
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(
        data=[
            AuditEventOut.model_validate(
                {**r, "tenant_id": str(r["tenant_id"]) if r["tenant_id"] else None}
            )
            for r in rows
        ],
        next_cursor=store.encode_cursor(rows[-1]["id"]) if more else None,
    )
