"""POST /v1/batches/{id}/retry: run a batch's failed and expired items again."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from llmq import store
from llmq.admission.publish import publish_quietly
from llmq.workers.dispatch import publish_batch_dispatch

from ..deps import EngineDep, PrincipalDep
from ..errors import ApiError
from ..schemas import ErrorOut, RetryOut
from .jobs import parse_id

router = APIRouter(tags=["batches"])
ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorOut}, 404: {"model": ErrorOut}}


@router.post(
    "/v1/batches/{batch_id}/retry", status_code=202, response_model=RetryOut, responses=ERRORS
)
def retry_batch(batch_id: str, engine: EngineDep, who: PrincipalDep) -> RetryOut:
    """Failed and expired items go back to queued with a fresh retry budget (attempts and cost
    of the earlier run stay counted), a new completion window and a new completion webhook.
    Succeeded, blocked and cancelled items are left alone; nothing to retry is a 202 with 0."""
    batch_uuid = parse_id(batch_id, "batch")
    retried = store.retry_batch_items(engine, who.tenant_id, batch_uuid)
    if retried is None:
        raise ApiError(404, "not_found", f"batch {batch_id} not found")
    count, priority = retried
    if count:
        publish_quietly(
            lambda: publish_batch_dispatch(str(batch_uuid), priority), f"batch {batch_uuid} retry"
        )
    return RetryOut(id=str(batch_uuid), retried=count)
