"""The provider Batch lane's records: lane jobs waiting for an upload, upload intents and
their upstream batches (llmq/execution/lane.py runs them).

A job waits in the lane as `queued` with `lane = 'provider_batch'`; the dispatch queries
leave it alone (no Celery message). It is claimed, recorded and finished through the same
functions as a sync job (llmq/store/jobs.py) once its upstream result is back; a job that must
fall back to the sync lane gets `lane = 'sync'` and is published like any other.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, text

from llmq.store import crypto
from llmq.store.base import autocommit
from llmq.store.jobs import ClaimedJob

LANE = "provider_batch"
LANE_LOCK_KEY = 0x6C6C6D62  # "llmb": one lane tick at a time across every worker
# Jobs the lane still owes an answer: waiting, or claimed by the runner right now.
_LIVE = "lane = 'provider_batch' AND status IN ('queued', 'running')"


_WAITING = f"{_LIVE} AND status = 'queued' AND provider_batch_id IS NULL"


@dataclass(frozen=True)
class WaitingChain:
    """Lane jobs not in an upload yet that share a chain: how many, and the oldest's age."""

    chain: list[str]
    jobs: int
    oldest_age_s: float


def waiting_lane_chains(engine: Engine) -> list[WaitingChain]:
    """The waiting lane jobs summed per chain (cancelled ones have ended already): one row
    per chain, whatever the number of jobs."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT chain, count(*), extract(epoch FROM now() - min(created_at))::float8 "
                f"FROM jobs WHERE {_WAITING} GROUP BY chain"
            )
        ).all()
    return [WaitingChain(list(r[0]), int(r[1]), float(r[2])) for r in rows]


def waiting_lane_ids(engine: Engine, chains: Sequence[Sequence[str]], limit: int) -> list[str]:
    """Up to `limit` waiting lane jobs with one of these chains, oldest first."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    f"SELECT id::text FROM jobs WHERE {_WAITING} "
                    "AND chain = ANY(CAST(:chains AS jsonb[])) ORDER BY created_at LIMIT :n"
                ),
                {"chains": [json.dumps(list(c)) for c in chains], "n": limit},
            ).scalars()
        )


def lane_jobs(engine: Engine, job_ids: Sequence[str]) -> list[ClaimedJob]:
    """The jobs as the pipeline sees them (decrypted), without claiming them: what is to be
    guarded and rendered into an upload. Order of `job_ids`."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, tenant_id, batch_id, template, template_version, input, params, "
                "chain, attempts_made, deliveries, created_at, "
                "cancel_requested_at IS NOT NULL AS cancel_requested, 0.0::float8 AS age_s, "
                "(SELECT extract(epoch FROM b.expires_at - now())::float8 FROM batches b "
                "WHERE b.id = jobs.batch_id) AS expires_in_s, parent_id "
                "FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": list(job_ids)},
        ).mappings()
        found = {}
        for row in rows:
            fields = dict(row)
            fields["input"] = crypto.decrypt(fields["input"])
            fields["params"] = crypto.open_params(fields["params"])
            found[str(fields["id"])] = ClaimedJob(**fields)
    return [found[i] for i in job_ids if i in found]


def open_intent(
    engine: Engine, intent_id: uuid.UUID, provider: str, model: str, job_ids: Sequence[str]
) -> list[str]:
    """Record the intent to upload these jobs as one upstream batch, before the upload; the
    jobs still waiting are tied to it (returned, in order). Nothing is tied: no intent."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO provider_batches (id, provider, model, state) "
                "VALUES (:id, :provider, :model, 'intent')"
            ),
            {"id": intent_id, "provider": provider, "model": model},
        )
        tied = {
            r[0]
            for r in conn.execute(
                text(
                    "UPDATE jobs SET provider_batch_id = :id WHERE id = ANY(CAST(:ids AS uuid[])) "
                    f"AND {_LIVE} AND status = 'queued' AND provider_batch_id IS NULL "
                    "RETURNING id::text"
                ),
                {"id": intent_id, "ids": list(job_ids)},
            )
        }
        if not tied:
            conn.execute(text("DELETE FROM provider_batches WHERE id = :id"), {"id": intent_id})
            return []
        conn.execute(
            text("UPDATE provider_batches SET job_count = :n WHERE id = :id"),
            {"id": intent_id, "n": len(tied)},
        )
    return [i for i in job_ids if i in tied]


@dataclass(frozen=True)
class ProviderBatchRow:
    id: uuid.UUID
    provider: str
    model: str
    state: str  # intent | uploaded | ended | failed
    upstream_id: str | None
    polls: int
    cancel_requested: bool
    created_at: datetime


_COLUMNS = (
    "id, provider, model, state, upstream_id, polls, "
    "cancel_requested_at IS NOT NULL AS cancel_requested, created_at"
)


def open_provider_batches(engine: Engine) -> list[ProviderBatchRow]:
    """Intents (an upload a crash may have cut short) and uploads due for a poll."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT {_COLUMNS} FROM provider_batches WHERE state = 'intent' "
                "OR (state = 'uploaded' AND (next_poll_at IS NULL OR next_poll_at <= now())) "
                "ORDER BY created_at"
            )
        ).mappings()
        return [ProviderBatchRow(**r) for r in rows]


def intent_job_ids(engine: Engine, intent_id: uuid.UUID, *, live: bool = True) -> list[str]:
    """The jobs an upload carries that still need its answer (`live=False`: every job it was
    made of, as upstream knows it), in a stable order."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT id::text FROM jobs WHERE provider_batch_id = :id "
                    f"{'AND ' + _LIVE if live else ''} ORDER BY created_at, id"
                ),
                {"id": intent_id},
            ).scalars()
        )


def known_upstream_ids(engine: Engine, provider: str) -> set[str]:
    """Upstream batches already recorded for an upload: never another intent's."""
    with engine.connect() as conn:
        return set(
            conn.execute(
                text(
                    "SELECT upstream_id FROM provider_batches WHERE provider = :p "
                    "AND upstream_id IS NOT NULL AND created_at > now() - interval '3 days'"
                ),
                {"p": provider},
            ).scalars()
        )


def record_upload(engine: Engine, intent_id: uuid.UUID, upstream_id: str, poll_in_s: float) -> None:
    with autocommit(engine) as conn:
        conn.execute(
            text(
                "UPDATE provider_batches SET state = 'uploaded', upstream_id = :u, "
                "upstream_status = 'in_progress', uploaded_at = now(), "
                "next_poll_at = now() + make_interval(secs => :s) "
                "WHERE id = :id AND state = 'intent'"
            ),
            {"id": intent_id, "u": upstream_id, "s": poll_in_s},
        )


def record_poll(
    engine: Engine, batch_id: uuid.UUID, upstream_status: str | None, poll_in_s: float
) -> None:
    """A poll done (`upstream_status` None: the provider did not answer), the next one due in
    `poll_in_s`."""
    with autocommit(engine) as conn:
        conn.execute(
            text(
                "UPDATE provider_batches SET upstream_status = coalesce(:st, upstream_status), "
                "polled_at = now(), "
                "polls = polls + 1, next_poll_at = now() + make_interval(secs => :s) "
                "WHERE id = :id"
            ),
            {"id": batch_id, "st": upstream_status, "s": poll_in_s},
        )


def end_provider_batch(
    engine: Engine, batch_id: uuid.UUID, state: str, error: str | None = None
) -> None:
    """The upload is done with: every job it carried has its answer or fell back."""
    assert state in ("ended", "failed")
    with autocommit(engine) as conn:
        conn.execute(
            text(
                "UPDATE provider_batches SET state = :state, error = coalesce(:error, error), "
                "ended_at = now(), next_poll_at = NULL WHERE id = :id"
            ),
            {"id": batch_id, "state": state, "error": error},
        )


def mark_cancel_requested(engine: Engine, batch_id: uuid.UUID) -> bool:
    """True the first time: the caller cancels the upstream batch."""
    with autocommit(engine) as conn:
        return (
            conn.execute(
                text(
                    "UPDATE provider_batches SET cancel_requested_at = now(), "
                    "next_poll_at = now() WHERE id = :id AND cancel_requested_at IS NULL"
                ),
                {"id": batch_id},
            ).rowcount
            == 1
        )


def uploads_to_cancel(engine: Engine) -> list[ProviderBatchRow]:
    """Uploads whose every job still waiting for it was cancelled by its client."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT {_COLUMNS} FROM provider_batches p WHERE state = 'uploaded' "
                "AND cancel_requested_at IS NULL AND NOT EXISTS (SELECT 1 FROM jobs j "
                "WHERE j.provider_batch_id = p.id AND j.lane = 'provider_batch' "
                "AND j.status IN ('queued', 'running') AND j.cancel_requested_at IS NULL) "
                "AND EXISTS (SELECT 1 FROM jobs j WHERE j.provider_batch_id = p.id "
                "AND j.lane = 'provider_batch' AND j.status IN ('queued', 'running'))"
            )
        ).mappings()
        return [ProviderBatchRow(**r) for r in rows]


def to_sync_lane(engine: Engine, job_ids: Sequence[str]) -> list[str]:
    """Waiting lane jobs the lane cannot carry go to the sync lane, unpublished: the
    reconciler publishes them at its next tick. Returns the ids moved."""
    if not job_ids:
        return []
    with autocommit(engine) as conn:
        rows = conn.execute(
            text(
                "UPDATE jobs SET lane = 'sync', dispatched_at = NULL, not_before = NULL "
                "WHERE id = ANY(CAST(:ids AS uuid[])) AND lane = 'provider_batch' "
                "AND status IN ('queued', 'retrying') RETURNING id::text"
            ),
            {"ids": list(job_ids)},
        )
        return [r[0] for r in rows]


def hand_to_sync(
    engine: Engine, job_id: uuid.UUID, owner: str, route: list[dict[str, Any]]
) -> bool:
    """A job the lane claimed goes to the sync lane in one step (a crash leaves it either
    here or there): retrying and unpublished, so the reconciler publishes it at its next tick.
    The lane's claim is not a lost delivery. False when `owner` no longer holds it."""
    with autocommit(engine) as conn:
        return (
            conn.execute(
                text(
                    "UPDATE jobs SET status = 'retrying', lane = 'sync', "
                    "deliveries = deliveries - 1, not_before = NULL, dispatched_at = NULL, "
                    "lease_owner = NULL, lease_expires_at = NULL, route = CAST(:route AS jsonb) "
                    "WHERE id = :id AND lease_owner = :owner AND status = 'running'"
                ),
                {"id": job_id, "owner": owner, "route": json.dumps(route)},
            ).rowcount
            == 1
        )


def upstream_of_jobs(engine: Engine, job_ids: Sequence[str]) -> dict[str, tuple[str | None, str]]:
    """job id -> (upstream batch id, its status) for jobs carried by an upload (job views)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT j.id::text, p.upstream_id, coalesce(p.upstream_status, p.state) "
                "FROM jobs j JOIN provider_batches p ON p.id = j.provider_batch_id "
                "WHERE j.id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": list(job_ids)},
        ).all()
    return {r[0]: (r[1], r[2]) for r in rows}


def lane_stats(engine: Engine) -> dict[str, int]:
    """Uploads per state (operators, tests)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT state, count(*) FROM provider_batches GROUP BY state")
        ).all()
    return {r[0]: int(r[1]) for r in rows}


@contextmanager
def lane_lock(engine: Engine) -> Iterator[bool]:
    """Hold the lane's lock for a tick (True), or learn another worker holds it (False). A
    transaction-scoped lock (safe behind PgBouncer in transaction mode) on a transaction kept
    open for the tick: a worker killed mid-tick loses its connection, and with it the lock."""
    with engine.begin() as conn:
        yield bool(
            conn.execute(
                text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": LANE_LOCK_KEY}
            ).scalar()
        )
