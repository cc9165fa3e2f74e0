"""Cancellation: end waiting jobs at once, flag running ones for their worker."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import Engine, text

from llmq.errors import JobErrorCode
from llmq.store.children import roll_up_parent

# Job totals from its attempts, for jobs that end without their worker's finish_job (cancelled
# while waiting, or given up by the reconciler): what was spent is never dropped.
ROLLUP_SET = (
    "input_tokens = (SELECT coalesce(sum(a.input_tokens), 0) FROM attempts a "
    "WHERE a.job_id = jobs.id), "
    "output_tokens = (SELECT coalesce(sum(a.output_tokens), 0) FROM attempts a "
    "WHERE a.job_id = jobs.id), "
    "cost_usd = (SELECT CASE WHEN bool_or(a.cost_usd IS NULL) THEN NULL "
    "ELSE coalesce(sum(a.cost_usd), 0) END FROM attempts a WHERE a.job_id = jobs.id)"
)

# A provider Batch lane job already in an upload: like a running job, it is flagged; the lane
# cancels the upstream batch, keeps (and pays) the answers already produced, cancels the rest.
_UPSTREAM = "(lane = 'provider_batch' AND provider_batch_id IS NOT NULL)"


@dataclass(frozen=True)
class Cancellation:
    cancelled: int  # were waiting: cancelled now, no provider call will start
    stopping: int  # were running: their workers stop at the next step


def cancel_jobs(
    engine: Engine,
    tenant_id: uuid.UUID,
    *,
    job_id: uuid.UUID | None = None,
    batch_id: uuid.UUID | None = None,
) -> Cancellation | None:
    """Cancel one job or every live job of a batch; None when the tenant has no such thing.

    Waiting jobs end at once (a message still on the queue then finds nothing to claim);
    running jobs are flagged and their worker finishes them as cancelled at its next step."""
    assert (job_id is None) != (batch_id is None)
    scope = "job_id" if job_id is not None else "batch_id"
    column = "id" if job_id is not None else "batch_id"
    params = {"t": tenant_id, scope: job_id or batch_id}
    with engine.begin() as conn:
        if batch_id is not None:
            found = conn.execute(
                text(
                    "UPDATE batches SET cancelled_at = coalesce(cancelled_at, now()) "
                    "WHERE id = :batch_id AND tenant_id = :t RETURNING id"
                ),
                params,
            ).first()
        else:
            found = conn.execute(
                text("SELECT id FROM jobs WHERE id = :job_id AND tenant_id = :t"), params
            ).first()
        if found is None:
            return None
        cancelled = conn.execute(
            text(
                "UPDATE jobs SET status = 'cancelled', error_code = :code, "
                "error_message = 'cancelled by the client', finished_at = now(), "
                f"not_before = NULL, cancel_requested_at = now(), {ROLLUP_SET} "
                f"WHERE {column} = :{scope} AND tenant_id = :t "
                f"AND status IN ('queued', 'retrying', 'waiting') AND NOT {_UPSTREAM} "
                "RETURNING id, EXISTS (SELECT 1 FROM jobs c WHERE c.parent_id = jobs.id)"
            ),
            {**params, "code": JobErrorCode.CANCELLED},
        ).all()
        # A long document's chunk and reduce jobs belong to its parent, not to the batch.
        parents = [row[0] for row in cancelled if row[1]]
        children = {"ps": parents, "t": tenant_id, "code": JobErrorCode.CANCELLED}
        conn.execute(
            text(
                "UPDATE jobs SET status = 'cancelled', error_code = :code, "
                "error_message = 'cancelled by the client', finished_at = now(), "
                f"not_before = NULL, cancel_requested_at = now(), {ROLLUP_SET} "
                "WHERE parent_id = ANY(:ps) AND tenant_id = :t "
                "AND status IN ('queued', 'retrying')"
            ),
            children,
        )
        conn.execute(
            text(
                "UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()) "
                "WHERE parent_id = ANY(:ps) AND tenant_id = :t AND status = 'running'"
            ),
            children,
        )
        stopping = conn.execute(
            text(
                "UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()) "
                f"WHERE {column} = :{scope} AND tenant_id = :t "
                f"AND (status = 'running' OR (status = 'queued' AND {_UPSTREAM}))"
            ),
            params,
        ).rowcount
        for parent in parents:
            roll_up_parent(conn, parent)  # what its children spent stays on the document
    return Cancellation(cancelled=len(cancelled), stopping=stopping)
