"""POST /v1/jobs and GET /v1/jobs/{id}."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from llmq import store
from llmq.admission.pipeline import Item, Submission
from llmq.longdocs import mapreduce
from llmq.store.models import TERMINAL_STATUSES, JobStatus

from .. import cancel
from ..deps import AdmissionDep, EngineDep, EventsDep, PrincipalDep, SettingsDep
from ..errors import ApiError
from ..intake import IdempotencyKey, once_per_key
from ..schemas import ErrorOut, JobAccepted, JobIn, JobOut, error_responses

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ERRORS = error_responses(401, 402, 404, 409, 422, 413, 429)


@router.post(
    "", status_code=202, response_model=JobAccepted, responses={**ERRORS, 409: {"model": ErrorOut}}
)
def submit_job(
    body: JobIn,
    engine: EngineDep,
    settings: SettingsDep,
    who: PrincipalDep,
    admission: AdmissionDep,
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted | JSONResponse:
    item = Item(body.input, body.params.model_dump(exclude_none=True), body.custom_id,
                body.metadata)  # fmt: skip
    submission = Submission(
        template=body.template, items=[item], template_version=body.template_version,
        chain=body.chain, priority=body.priority,
    )  # fmt: skip
    once = once_per_key(engine, who, idempotency_key, "jobs", body, JobAccepted(id=""),
                        settings.idempotency_ttl_s)  # fmt: skip
    outcome = admission.admit_job(submission, who, once)
    if isinstance(outcome, JSONResponse):
        return outcome
    return JobAccepted(id=str(outcome))


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
