"""Shadow jobs and the evaluation log: the rows written with a finishing job (in its
transaction, so a crash cannot keep the one without the other), a batch's shadow spec, and the
log read back for the report.

Each function that writes takes the finishing job's Connection (llmq/store/jobs.finish_job
opens the transaction); the reads take an Engine.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from llmq.store import crypto

SHADOW_PRIORITY = "low"  # the llm.low queue: a shadow never delays client work


@dataclass(frozen=True)
class NewShadow:
    """The shadow job to insert next to a finished primary."""

    id: uuid.UUID
    template_version: int
    chain: list[str]


@dataclass(frozen=True)
class EvalWrite:
    """The eval_log row of the finishing job (tokens, cost and latency are read from its row and
    attempts in SQL) and, for a primary, its shadow job."""

    role: str  # primary | shadow
    variant: str
    template_version: int
    chain: list[str]
    output: str | None
    scores: dict[str, float] = field(default_factory=dict)
    shadow: NewShadow | None = None


_EVAL_SQL = text(
    "INSERT INTO eval_log (tenant_id, job_id, pair_id, role, template, template_version, chain, "
    "variant, status, output, input_tokens, output_tokens, cost_usd, latency_ms, scores) "
    "SELECT j.tenant_id, j.id, coalesce(j.shadow_of, j.id), :role, j.template, :version, "
    "CAST(:chain AS jsonb), :variant, j.status, :output, j.input_tokens, j.output_tokens, "
    "j.cost_usd, (SELECT coalesce(sum(a.latency_ms), 0) FROM attempts a "
    "WHERE a.job_id = j.id AND a.attempt_no > j.attempts_floor), CAST(:scores AS jsonb) "
    "FROM jobs j WHERE j.id = :id ON CONFLICT (job_id) DO NOTHING"
)

# A copy of the primary's stored (already redacted and sealed) input and params; the primary's
# short-input route is its own chain's, not the shadow's.
_SHADOW_SQL = text(
    "INSERT INTO jobs (id, tenant_id, batch_id, status, priority, template, template_version, "
    "input, params, chain, api_key_id, kind, shadow_of, dispatched_at) "
    "SELECT :sid, j.tenant_id, NULL, 'queued', :priority, j.template, :version, j.input, "
    "j.params - 'short_input', CAST(:chain AS jsonb), j.api_key_id, 'shadow', j.id, now() "
    "FROM jobs j WHERE j.id = :id AND j.kind = 'primary' "
    "AND NOT EXISTS (SELECT 1 FROM jobs s WHERE s.shadow_of = j.id)"
)


def write_evals(conn: Connection, job_id: uuid.UUID, write: EvalWrite) -> None:
    """In the transaction that just finished `job_id`: its eval_log row, and its shadow job."""
    conn.execute(
        _EVAL_SQL,
        {
            "id": job_id,
            "role": write.role,
            "version": write.template_version,
            "chain": json.dumps(write.chain),
            "variant": write.variant,
            "output": crypto.encrypt_opt(write.output),
            "scores": json.dumps(write.scores),
        },
    )
    if write.shadow is not None:
        conn.execute(
            _SHADOW_SQL,
            {
                "sid": write.shadow.id,
                "id": job_id,
                "priority": SHADOW_PRIORITY,
                "version": write.shadow.template_version,
                "chain": json.dumps(write.shadow.chain),
            },
        )


def batch_shadow(engine: Engine, batch_id: uuid.UUID) -> dict[str, Any] | None:
    """The shadow spec a batch was submitted with (None: the settings' apply)."""
    with engine.connect() as conn:
        value: dict[str, Any] | None = conn.execute(
            text("SELECT shadow FROM batches WHERE id = :id"), {"id": batch_id}
        ).scalar_one_or_none()
    return value


def eval_rows(
    engine: Engine,
    tenant_id: uuid.UUID,
    template: str,
    since: datetime | None = None,
    limit: int = 100_000,
) -> list[dict[str, Any]]:
    """The tenant's eval_log rows of `template` (newest `limit`), without outputs."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT pair_id::text AS pair_id, role, variant, status, input_tokens, "
                "output_tokens, cost_usd, latency_ms, scores FROM eval_log "
                "WHERE tenant_id = :t AND template = :template "
                "AND (CAST(:since AS timestamptz) IS NULL OR created_at >= :since) "
                "ORDER BY created_at DESC, id DESC LIMIT :limit"
            ),
            {"t": tenant_id, "template": template, "since": since, "limit": limit},
        ).mappings()
        return [dict(r) for r in rows]


def eval_pair_outputs(
    engine: Engine, tenant_id: uuid.UUID, pair_id: uuid.UUID
) -> list[dict[str, Any]]:
    """Both rows of one pair with their outputs in clear (for reading a difference by eye)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT job_id::text AS job_id, role, variant, status, output, scores "
                "FROM eval_log WHERE tenant_id = :t AND pair_id = :p ORDER BY role"
            ),
            {"t": tenant_id, "p": pair_id},
        ).mappings()
        return [{**r, "output": crypto.decrypt_opt(r["output"])} for r in rows]
