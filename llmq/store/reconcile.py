"""The reconciler's queries, run under its advisory lock: expired leases, jobs due for
(re)publishing, forgotten dispatches, closed completion windows.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, text

from llmq.errors import JobErrorCode
from llmq.store.cancel import ROLLUP_SET

RECONCILE_LOCK_KEY = 0x6C6C6D71  # "llmq"


def try_reconcile_lock(conn: Connection) -> bool:
    """One reconciler at a time across all workers; released when the transaction ends."""
    return bool(
        conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": RECONCILE_LOCK_KEY}
        ).scalar_one()
    )


def expire_leases(conn: Connection, max_deliveries: int) -> list[tuple[str, str, str]]:
    """Running jobs whose worker stopped renewing: back to queued, or failed after N tries."""
    rows = conn.execute(
        text(
            "UPDATE jobs SET "
            "status = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' "
            "WHEN deliveries >= :max THEN 'failed' ELSE 'queued' END, "
            "error_code = CASE WHEN cancel_requested_at IS NOT NULL THEN :cancelled "
            "WHEN deliveries >= :max THEN :worker_lost ELSE error_code END, "
            "error_message = CASE WHEN cancel_requested_at IS NOT NULL THEN "
            "'cancelled by the client' WHEN deliveries >= :max THEN "
            "'the job was interrupted ' || deliveries || ' times (worker died or timed out)' "
            "ELSE error_message END, "
            "finished_at = CASE WHEN cancel_requested_at IS NOT NULL OR deliveries >= :max "
            "THEN now() ELSE NULL END, "
            "lease_owner = NULL, lease_expires_at = NULL, dispatched_at = NULL, "
            f"{ROLLUP_SET} "
            "WHERE status = 'running' AND lease_expires_at < now() "
            "RETURNING id::text, status, priority"
        ),
        {
            "max": max_deliveries,
            "cancelled": JobErrorCode.CANCELLED,
            "worker_lost": JobErrorCode.WORKER_LOST,
        },
    )
    return [(r[0], r[1], r[2]) for r in rows]


def extend_leases(conn: Connection, lease_s: float) -> int:
    """Every running job's lease lasts at least `lease_s` from now (after Postgres was
    unreachable, when no worker could renew): live workers renew again within a third of it,
    and a job whose worker died meanwhile comes back one lease later."""
    return conn.execute(
        text(
            "UPDATE jobs SET lease_expires_at = greatest(lease_expires_at, "
            "now() + make_interval(secs => :lease)) WHERE status = 'running'"
        ),
        {"lease": lease_s},
    ).rowcount


def take_due_for_dispatch(conn: Connection, grace_s: float, limit: int) -> list[tuple[str, str]]:
    """Mark and return live jobs with no message on the queue: never published (past a grace
    period, so the API's own publish is not raced), or due after a backoff."""
    rows = conn.execute(
        text(
            # MATERIALIZED: as a plain IN-subquery the planner may re-run the SKIP LOCKED scan
            # and mark more than :limit rows.
            "WITH due AS MATERIALIZED (SELECT id FROM jobs "
            "WHERE status IN ('queued', 'retrying') AND dispatched_at IS NULL AND lane = 'sync' "
            "AND (not_before IS NULL OR not_before <= now()) "
            "AND (status = 'retrying' OR created_at < now() - make_interval(secs => :grace)) "
            "ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED) "
            "UPDATE jobs SET dispatched_at = now() FROM due WHERE jobs.id = due.id "
            "RETURNING jobs.id::text, jobs.priority"
        ),
        {"grace": grace_s, "limit": limit},
    )
    return [(r[0], r[1]) for r in rows]


def forget_stale_dispatches(
    conn: Connection, priorities: Sequence[str], older_than_s: float
) -> int:
    """Jobs published long ago whose queue is now empty lost their message (a crash between
    marking and publishing, or a broker that dropped it): publish them again."""
    if not priorities:
        return 0
    return conn.execute(
        text(
            "UPDATE jobs SET dispatched_at = NULL WHERE status = 'queued' "
            "AND priority = ANY(:p) AND dispatched_at < now() - make_interval(secs => :age)"
        ),
        {"p": list(priorities), "age": older_than_s},
    ).rowcount


def forget_dispatches(conn: Connection) -> int:
    """The broker lost its messages (restart or flush): every live job needs a new one."""
    return conn.execute(
        text(
            "UPDATE jobs SET dispatched_at = NULL WHERE status IN ('queued', 'retrying') "
            "AND dispatched_at IS NOT NULL"
        )
    ).rowcount


def expire_overdue_jobs(conn: Connection) -> list[str]:
    """Waiting jobs of batches whose completion window closed end `expired`. Running ones stop
    at their next provider call (the pipeline checks the window). Returns the batch ids."""
    rows = conn.execute(
        text(
            "UPDATE jobs SET status = 'expired', error_code = :code, "
            "error_message = 'the batch completion window closed before the job finished', "
            "finished_at = now(), lease_owner = NULL, lease_expires_at = NULL, "
            "dispatched_at = NULL, not_before = NULL "
            "FROM batches b WHERE jobs.batch_id = b.id AND b.expires_at <= now() "
            "AND jobs.status IN ('queued', 'retrying') "
            # A provider Batch lane job already upstream is running there: its answer, paid
            # for, is still recorded; if none comes back the sync lane ends it expired.
            "AND NOT (jobs.lane = 'provider_batch' AND jobs.provider_batch_id IS NOT NULL) "
            "RETURNING b.id::text"
        ),
        {"code": JobErrorCode.EXPIRED},
    )
    return sorted({r[0] for r in rows})
