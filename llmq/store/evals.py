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
    judge: str | None = None  # the judge's link, kept in the shadow's metadata


@dataclass(frozen=True)
class NewJudge:
    """The judge job to insert next to a finished shadow (llmq/evals/judge.py)."""

    id: uuid.UUID
    link: str
    input: str
    template: str
    params: dict[str, Any]


@dataclass(frozen=True)
class JudgeContext:
    """What a finishing shadow needs to start its judge."""

    link: str
    primary_output: str | None


@dataclass(frozen=True)
class EvalWrite:
    """What a finishing job writes with it: a primary or shadow its eval_log row (tokens, cost
    and latency are read from its row and attempts in SQL), a primary its shadow job, a shadow
    its judge job; a judge (`role` judge) only its `verdict` onto both rows of its pair."""

    role: str  # primary | shadow | judge
    variant: str
    template_version: int
    chain: list[str]
    output: str | None
    scores: dict[str, float] = field(default_factory=dict)
    shadow: NewShadow | None = None
    judge: NewJudge | None = None
    verdict: tuple[float, float] | None = None  # (primary's score, shadow's score)


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
    "input, params, chain, api_key_id, kind, shadow_of, dispatched_at, metadata) "
    "SELECT :sid, j.tenant_id, NULL, 'queued', :priority, j.template, :version, j.input, "
    "j.params - 'short_input', CAST(:chain AS jsonb), j.api_key_id, 'shadow', j.id, now(), "
    "CAST(:meta AS jsonb) "
    "FROM jobs j WHERE j.id = :id AND j.kind = 'primary' "
    "AND NOT EXISTS (SELECT 1 FROM jobs s WHERE s.shadow_of = j.id AND s.kind = 'shadow')"
)

# The judge belongs to the pair (shadow_of = the primary), like the shadow.
_JUDGE_SQL = text(
    "INSERT INTO jobs (id, tenant_id, batch_id, status, priority, template, template_version, "
    "input, params, chain, api_key_id, kind, shadow_of, dispatched_at) "
    "SELECT :jid, j.tenant_id, NULL, 'queued', :priority, :template, 1, :input, "
    "CAST(:params AS jsonb), CAST(:chain AS jsonb), j.api_key_id, 'judge', j.shadow_of, now() "
    "FROM jobs j WHERE j.id = :id AND j.kind = 'shadow' "
    "AND NOT EXISTS (SELECT 1 FROM jobs k WHERE k.shadow_of = j.shadow_of AND k.kind = 'judge')"
)

_VERDICT_SQL = text(
    "UPDATE eval_log e SET scores = e.scores || jsonb_build_object('judge', "
    "CASE WHEN e.role = 'primary' THEN CAST(:primary AS float8) "
    "ELSE CAST(:shadow AS float8) END) "
    "FROM jobs j WHERE j.id = :id AND e.pair_id = j.shadow_of"
)


def write_evals(conn: Connection, job_id: uuid.UUID, write: EvalWrite) -> None:
    """In the transaction that just finished `job_id`: its eval_log row, its shadow or judge
    job; for a judge, its scores on its pair's rows."""
    if write.role == "judge":
        if write.verdict is not None:
            primary, shadow = write.verdict
            conn.execute(_VERDICT_SQL, {"id": job_id, "primary": primary, "shadow": shadow})
        return
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
                "meta": json.dumps({"judge": write.shadow.judge} if write.shadow.judge else {}),
            },
        )
    if write.judge is not None:
        conn.execute(
            _JUDGE_SQL,
            {
                "jid": write.judge.id,
                "id": job_id,
                "priority": SHADOW_PRIORITY,
                "template": write.judge.template,
                "input": crypto.encrypt(write.judge.input),
                "params": json.dumps(crypto.seal_params(write.judge.params)),
                "chain": json.dumps([write.judge.link]),
            },
        )


def judge_context(engine: Engine, shadow_id: uuid.UUID) -> JudgeContext | None:
    """The judge link of a shadow job and its primary's answer (None: no judge asked for)."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT s.metadata->>'judge', e.output FROM jobs s "
                "LEFT JOIN eval_log e ON e.pair_id = s.shadow_of AND e.role = 'primary' "
                "WHERE s.id = :id AND s.metadata->>'judge' IS NOT NULL"
            ),
            {"id": shadow_id},
        ).first()
    return None if row is None else JudgeContext(row[0], crypto.decrypt_opt(row[1]))


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
