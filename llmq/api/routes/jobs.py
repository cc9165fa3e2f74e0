"""POST /v1/jobs and GET /v1/jobs/{id}."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from llmq import store
from llmq.guardrails.selection import GuardrailSelection
from llmq.longdocs import mapreduce
from llmq.store.models import TERMINAL_STATUSES, JobStatus
from llmq.workers.dispatch import publish_jobs

from .. import cancel
from ..budget_gate import enforce_budget
from ..deps import EngineDep, EventsDep, PrincipalDep, SettingsDep
from ..errors import ApiError
from ..ingest_guard import check_prompt_size, redact_jobs, selection
from ..intake import IdempotencyKey, submit_once
from ..schemas import ErrorOut, JobAccepted, JobIn, JobOut
from .submit import (
    assign_version,
    publish_quietly,
    resolve_chain,
    resolve_template,
    with_short_input_routes,
)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut},
    402: {"model": ErrorOut},
    404: {"model": ErrorOut},
    409: {"model": ErrorOut},
    422: {"model": ErrorOut},
    413: {"model": ErrorOut},
    429: {"model": ErrorOut},
}


@router.post(
    "", status_code=202, response_model=JobAccepted, responses={**ERRORS, 409: {"model": ErrorOut}}
)
def submit_job(
    body: JobIn,
    engine: EngineDep,
    settings: SettingsDep,
    who: PrincipalDep,
    request: Request,
    guards: GuardrailSelection = Depends(selection),
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted | JSONResponse:
    template = resolve_template(body.template, [body.params], body.template_version, settings)
    request.app.state.key_limiter.check_items(who, 1)  # only requests that would be written
    chain = resolve_chain(body.chain, settings)
    version = assign_version(
        template, body.template_version, who.tenant_id, body.custom_id, body.input, settings
    )
    [params] = with_short_input_routes(
        template,
        [version],
        [body.params.model_dump(exclude_none=True)],
        explicit_chain=body.chain is not None,
        settings=settings,
    )
    enforce_budget(engine, settings, who.tenant_id, template, chain, [(body.input, params)])
    check_prompt_size(guards, template, [body.input], "body.input")
    [stored] = redact_jobs(guards, settings, template, [(body.input, params)])

    def insert(idempotency: store.Idempotency | None) -> uuid.UUID:
        return store.insert_job(
            engine,
            tenant_id=who.tenant_id,
            template=template.name,
            template_version=template.version,
            priority=body.priority,
            chain=chain,
            item=store.NewJob(
                input=stored.input,
                custom_id=body.custom_id,
                params=stored.params,
                meta=body.metadata,
                guardrails=stored.findings,
                template_version=version,
            ),
            idempotency=idempotency,
            api_key_id=who.key_id,
        )

    outcome = submit_once(
        engine, who, idempotency_key, "jobs", body, JobAccepted(id=""), insert,
        settings.idempotency_ttl_s,
    )  # fmt: skip
    if isinstance(outcome, JSONResponse):
        return outcome
    job_id = outcome
    # The row is inserted as dispatched; if the broker refuses, it is unmarked for the reconciler.
    if not publish_quietly(lambda: publish_jobs([(str(job_id), body.priority)]), f"job {job_id}"):
        store.undo_dispatch(engine, [str(job_id)])
    return JobAccepted(id=str(job_id))


def parse_id(value: str, kind: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(404, "not_found", f"{kind} {value} not found") from None


@router.get("/{job_id}", response_model=JobOut, responses=ERRORS)
def get_job(job_id: str, engine: EngineDep, who: PrincipalDep) -> JobOut:
    job = store.get_job(engine, who.tenant_id, parse_id(job_id, "job"))
    if job is None:
        raise ApiError(404, "not_found", f"job {job_id} not found")
    job["id"] = str(job["id"])
    job["batch_id"] = str(job["batch_id"]) if job["batch_id"] else None
    job["parent_id"] = str(job["parent_id"]) if job["parent_id"] else None
    # Only a split document has chunk progress; the flag came with the row (no extra query).
    if job.pop("has_children"):
        job["progress"] = mapreduce.progress(engine, uuid.UUID(job["id"]), job["status"])
    return JobOut.model_validate(job)


@router.post("/{job_id}/cancel", response_model=JobOut, responses=ERRORS)
def cancel_job(job_id: str, engine: EngineDep, events: EventsDep, who: PrincipalDep) -> JobOut:
    """Cancel a waiting job at once, a running one at its next step. Idempotent."""
    job_uuid = parse_id(job_id, "job")
    current = store.get_job(engine, who.tenant_id, job_uuid)
    if current is None:
        raise ApiError(404, "not_found", f"job {job_id} not found")
    if current["status"] in TERMINAL_STATUSES and current["status"] != JobStatus.CANCELLED:
        raise ApiError(409, "not_cancellable", f"job {job_id} already {current['status']}")
    cancel.cancel_job(engine, events, who.tenant_id, job_uuid, current["batch_id"])
    return get_job(job_id, engine, who)
