"""Map-reduce of long documents: a parent job waits while its chunk and combine children
run (llmq/longdocs/mapreduce.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text

from llmq.errors import JobErrorCode
from llmq.store import crypto
from llmq.store.jobs import Outcome


@dataclass(frozen=True)
class NewChild:
    template: str
    template_version: int
    input: str
    params: dict[str, Any]
    level: int
    index: int


def _insert_children(
    conn: Connection, parent_id: uuid.UUID, children: Sequence[NewChild]
) -> list[tuple[str, str]]:
    """Insert children as dispatched (the caller publishes, or undoes on failure)."""
    rows = [
        {
            "id": uuid.uuid4(),
            "parent": parent_id,
            "template": c.template,
            "version": c.template_version,
            "input": crypto.encrypt(c.input),
            "params": json.dumps(crypto.seal_params(c.params)),
            "level": c.level,
            "idx": c.index,
        }
        for c in children
    ]
    conn.execute(
        text(
            "INSERT INTO jobs (id, tenant_id, priority, template, template_version, input, params, "
            "chain, parent_id, chunk_level, chunk_index, seq, dispatched_at) "
            "SELECT :id, p.tenant_id, p.priority, :template, :version, :input, "
            "CAST(:params AS jsonb), p.chain, p.id, :level, :idx, :idx, now() "
            "FROM jobs p WHERE p.id = :parent"
        ),
        rows,
    )
    priority = conn.execute(
        text("SELECT priority FROM jobs WHERE id = :id"), {"id": parent_id}
    ).scalar_one()
    return [(str(r["id"]), priority) for r in rows]


def start_children(
    engine: Engine,
    parent_id: uuid.UUID,
    owner: str,
    children: Sequence[NewChild],
    route: list[dict[str, Any]],
    guardrails: list[dict[str, Any]],
) -> list[tuple[str, str]] | None:
    """Park the parent as waiting and insert its chunk jobs, atomically; None if the parent
    is no longer ours (lease lost)."""
    with engine.begin() as conn:
        parked = conn.execute(
            text(
                "UPDATE jobs SET status = 'waiting', lease_owner = NULL, lease_expires_at = NULL, "
                "route = CAST(:route AS jsonb), guardrails = CAST(:guardrails AS jsonb) "
                "WHERE id = :id AND lease_owner = :owner AND status = 'running'"
            ),
            {
                "id": parent_id,
                "owner": owner,
                "route": json.dumps(route),
                "guardrails": json.dumps(guardrails),
            },
        ).rowcount
        if parked != 1:
            return None
        return _insert_children(conn, parent_id, children)


@dataclass(frozen=True)
class WaitingParent:
    id: uuid.UUID
    template: str
    template_version: int
    params: dict[str, Any]
    status: str
    chain: list[str]


def lock_parent(conn: Connection, parent_id: uuid.UUID) -> WaitingParent | None:
    """The parent row, locked for this transaction: one child at a time advances it."""
    row = conn.execute(
        text(
            "SELECT id, template, template_version, params, status, chain FROM jobs "
            "WHERE id = :id FOR UPDATE"
        ),
        {"id": parent_id},
    ).first()
    if row is None:
        return None
    fields = row._asdict()
    fields["params"] = crypto.open_params(fields["params"])
    return WaitingParent(**fields)


def current_level(conn: Connection, parent_id: uuid.UUID) -> list[dict[str, Any]]:
    """The children of the highest level so far, in order."""
    return [
        {**r, "result": crypto.decrypt_opt(r["result"])}
        for r in conn.execute(
            text(
                "SELECT id, chunk_level, chunk_index, status, result, provider, model, "
                "error_code, error_message FROM jobs WHERE parent_id = :p AND chunk_level = "
                "(SELECT max(chunk_level) FROM jobs WHERE parent_id = :p) ORDER BY chunk_index"
            ),
            {"p": parent_id},
        ).mappings()
    ]


def add_children(
    conn: Connection, parent_id: uuid.UUID, children: Sequence[NewChild]
) -> list[tuple[str, str]]:
    return _insert_children(conn, parent_id, children)


def finish_parent(conn: Connection, parent_id: uuid.UUID, outcome: Outcome) -> None:
    conn.execute(
        text(
            "UPDATE jobs SET status = :status, result = :result, provider = :provider, "
            "model = :model, error_code = :error_code, error_message = :error_message, "
            "finished_at = now() WHERE id = :id AND status = 'waiting'"
        ),
        {
            "id": parent_id,
            "status": outcome.status,
            "result": crypto.encrypt_opt(outcome.result),
            "provider": outcome.provider,
            "model": outcome.model,
            "error_code": outcome.error_code,
            "error_message": outcome.error_message,
        },
    )


def cancel_open_children(conn: Connection, parent_id: uuid.UUID, reason: str) -> int:
    """Children not yet started are not worth running once the parent has ended."""
    return conn.execute(
        text(
            "UPDATE jobs SET status = 'cancelled', error_code = :code, "
            "error_message = :reason, finished_at = now(), dispatched_at = NULL "
            "WHERE parent_id = :p AND status IN ('queued', 'retrying')"
        ),
        {"p": parent_id, "reason": reason, "code": JobErrorCode.PARENT_ENDED},
    ).rowcount


def roll_up_parent(conn: Connection, parent_id: uuid.UUID) -> None:
    """The parent's tokens and cost: every attempt of every child (and its own), so far.

    Run it in the transaction that ends the parent, so no reader sees a finished document
    whose totals still miss its last child's attempts."""
    conn.execute(
        text(
            "UPDATE jobs SET input_tokens = a.input_tokens, output_tokens = a.output_tokens, "
            "cost_usd = a.cost_usd FROM (SELECT coalesce(sum(input_tokens), 0) AS "
            "input_tokens, coalesce(sum(output_tokens), 0) AS output_tokens, "
            "CASE WHEN bool_or(cost_usd IS NULL) THEN NULL "
            "ELSE coalesce(sum(cost_usd), 0) END AS cost_usd FROM attempts "
            "WHERE job_id = :p OR job_id IN (SELECT id FROM jobs WHERE parent_id = :p)) a "
            "WHERE jobs.id = :p"
        ),
        {"p": parent_id},
    )


def stalled_parents(engine: Engine, limit: int = 100) -> list[uuid.UUID]:
    """Waiting parents none of whose children is still live: a crash between a child's finish
    and the parent's advance left them; the reconciler advances them."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT p.id FROM jobs p WHERE p.status = 'waiting' AND NOT EXISTS "
                    "(SELECT 1 FROM jobs c WHERE c.parent_id = p.id "
                    "AND c.status IN ('queued', 'running', 'retrying')) LIMIT :n"
                ),
                {"n": limit},
            ).scalars()
        )


def child_counts(engine: Engine, parent_id: uuid.UUID) -> list[dict[str, Any]]:
    """(level, status, n) of a parent's children, for its progress."""
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                text(
                    "SELECT chunk_level AS level, status, count(*) AS n FROM jobs "
                    "WHERE parent_id = :p GROUP BY chunk_level, status"
                ),
                {"p": parent_id},
            ).mappings()
        ]
