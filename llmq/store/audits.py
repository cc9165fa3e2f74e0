"""Checks of the record of truth after a fault (llmq/testing/chaos.py): did every job of a
batch end exactly once, do job totals equal the sum of their attempts, was anything paid twice.
Read-only; each function is a unit of work on its own connection.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text


@dataclass
class BatchAudit:
    """The figures that say whether a batch ran exactly once."""

    statuses: dict[str, int]
    totals_mismatched: int  # jobs whose tokens/cost differ from the sum of their attempts
    attempt_outcomes: dict[str, int]
    jobs_paid_twice: int  # jobs with more than one successful (billed) provider answer
    redelivered: int  # jobs whose message was delivered more than once


def batch_job_statuses(engine: Engine, batch_id: uuid.UUID) -> list[tuple[str, str]]:
    """(job id, status) of every job of the batch."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id::text, status FROM jobs WHERE batch_id = :b"), {"b": batch_id}
        ).all()
    return [(str(job_id), str(status)) for job_id, status in rows]


def audit_batch(engine: Engine, batch_id: uuid.UUID) -> BatchAudit:
    """The exactly-once figures of a batch, read on one connection."""
    with engine.connect() as conn:
        statuses: dict[Any, Any] = dict(
            conn.execute(
                text("SELECT status, count(*) FROM jobs WHERE batch_id = :b GROUP BY status"),
                {"b": batch_id},
            ).all()
        )
        mismatched = conn.execute(
            text(
                "SELECT count(*) FROM jobs j WHERE j.batch_id = :b AND ("
                " j.attempts_made <> (SELECT count(*) FROM attempts a WHERE a.job_id = j.id)"
                " OR j.input_tokens <> (SELECT coalesce(sum(input_tokens), 0) FROM attempts a"
                "   WHERE a.job_id = j.id)"
                " OR j.cost_usd IS DISTINCT FROM (SELECT CASE WHEN bool_or(cost_usd IS NULL)"
                "   THEN NULL ELSE coalesce(sum(cost_usd), 0) END FROM attempts a"
                "   WHERE a.job_id = j.id))"
            ),
            {"b": batch_id},
        ).scalar_one()
        outcomes: dict[Any, Any] = dict(
            conn.execute(
                text(
                    "SELECT a.outcome, count(*) FROM attempts a JOIN jobs j ON j.id = a.job_id "
                    "WHERE j.batch_id = :b GROUP BY a.outcome"
                ),
                {"b": batch_id},
            ).all()
        )
        paid_twice = conn.execute(
            text(
                "SELECT count(*) FROM (SELECT a.job_id FROM attempts a JOIN jobs j "
                "ON j.id = a.job_id WHERE j.batch_id = :b AND a.outcome = 'ok' "
                "GROUP BY a.job_id HAVING count(*) > 1) t"
            ),
            {"b": batch_id},
        ).scalar_one()
        redelivered = conn.execute(
            text("SELECT count(*) FROM jobs WHERE batch_id = :b AND deliveries > 1"),
            {"b": batch_id},
        ).scalar_one()
    return BatchAudit(
        statuses={str(k): int(v) for k, v in statuses.items()},
        totals_mismatched=int(mismatched),
        attempt_outcomes={str(k): int(v) for k, v in outcomes.items()},
        jobs_paid_twice=int(paid_twice),
        redelivered=int(redelivered),
    )


def recovered_and_cache_hits(engine: Engine, batch_id: uuid.UUID) -> tuple[int, int]:
    """Jobs of the batch finished from an answer a previous delivery paid for, and jobs
    answered from the cache."""
    with engine.connect() as conn:
        recovered, cache_hits = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE route::text LIKE '%recovered_attempt%'), "
                "count(*) FILTER (WHERE cache_hit) FROM jobs WHERE batch_id = :b"
            ),
            {"b": batch_id},
        ).one()
    return int(recovered), int(cache_hits)


def waits_after_rate_limit(engine: Engine, batch_id: uuid.UUID) -> list[float]:
    """After each 429 of the batch's jobs, the seconds until that job's next call to the same
    provider started (its latency taken off)."""
    with engine.connect() as conn:
        gaps = (
            conn.execute(
                text(
                    "SELECT extract(epoch FROM n.created_at - a.created_at) "
                    "- n.latency_ms / 1000 FROM attempts a JOIN jobs j ON j.id = a.job_id "
                    "JOIN attempts n ON n.job_id = a.job_id "
                    "AND n.attempt_no = a.attempt_no + 1 AND n.provider = a.provider "
                    "WHERE j.batch_id = :b AND a.outcome = 'rate_limited'"
                ),
                {"b": batch_id},
            )
            .scalars()
            .all()
        )
    return [float(gap) for gap in gaps]


def only_job_state(engine: Engine, batch_id: uuid.UUID) -> tuple[str, int, str | None]:
    """(status, deliveries, error_code) of the job of a one-job batch."""
    with engine.connect() as conn:
        status, deliveries, error_code = conn.execute(
            text("SELECT status, deliveries, error_code FROM jobs WHERE batch_id = :b"),
            {"b": batch_id},
        ).one()
    return str(status), int(deliveries), error_code
