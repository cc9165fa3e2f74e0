"""POST /v1/jobs and GET /v1/jobs/{id}."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from llmq import repository
from workers.dispatch import publish_jobs

from ..budget_gate import enforce_budget
from ..deps import EngineDep, PrincipalDep, SettingsDep
from ..errors import ApiError
from ..schemas import ErrorOut, JobAccepted, JobIn, JobOut
from .submit import publish_quietly, resolve_chain, resolve_template

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut},
    402: {"model": ErrorOut},
    404: {"model": ErrorOut},
    422: {"model": ErrorOut},
}


@router.post("", status_code=202, response_model=JobAccepted, responses=ERRORS)
def submit_job(
    body: JobIn, engine: EngineDep, settings: SettingsDep, who: PrincipalDep
) -> JobAccepted:
    template = resolve_template(body.template, [body.params])
    chain = resolve_chain(body.chain, settings)
    params = body.params.model_dump(exclude_none=True)
    enforce_budget(engine, settings, who.tenant_id, template, chain, [(body.input, params)])
    job_id = repository.insert_job(
        engine,
        tenant_id=who.tenant_id,
        template=template.name,
        template_version=template.version,
        priority=body.priority,
        chain=chain,
        item=repository.NewJob(
            input=body.input,
            custom_id=body.custom_id,
            params=params,
            meta=body.metadata,
        ),
        api_key_id=who.key_id,
    )
    # The row is inserted as dispatched; if the broker refuses, it is unmarked for the reconciler.
    if not publish_quietly(lambda: publish_jobs([(str(job_id), body.priority)]), f"job {job_id}"):
        repository.undo_dispatch(engine, [str(job_id)])
    return JobAccepted(id=str(job_id))


def parse_id(value: str, kind: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(404, "not_found", f"{kind} {value} not found") from None


@router.get("/{job_id}", response_model=JobOut, responses=ERRORS)
def get_job(job_id: str, engine: EngineDep, who: PrincipalDep) -> JobOut:
    job = repository.get_job(engine, who.tenant_id, parse_id(job_id, "job"))
    if job is None:
        raise ApiError(404, "not_found", f"job {job_id} not found")
    job["id"] = str(job["id"])
    job["batch_id"] = str(job["batch_id"]) if job["batch_id"] else None
    return JobOut.model_validate(job)
