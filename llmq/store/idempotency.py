"""Idempotency-Key records: a retried submission returns the first one's answer."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text

from llmq.errors import LlmqError


@dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key and what to answer a retry with (`response` gets the new "id")."""

    key: str
    endpoint: str
    request_hash: str
    status_code: int
    response: dict[str, Any]
    ttl_s: float = 86_400.0  # after this a key is free again (and the reconciler deletes it)


@dataclass(frozen=True)
class StoredResponse:
    endpoint: str
    request_hash: str
    status_code: int
    response: dict[str, Any]


class IdempotentReplay(LlmqError):
    """The key was used before by this tenant: the submission's transaction is rolled back."""

    def __init__(self, stored: StoredResponse) -> None:
        super().__init__(f"idempotency key already used for {stored.endpoint}")
        self.stored = stored


def remember_idempotency(
    conn: Connection, tenant_id: uuid.UUID, idem: Idempotency, resource_id: uuid.UUID
) -> None:
    """First statement of a submission's transaction. A concurrent submission with the same key
    waits on the primary key until this one commits, then finds its answer (race-safe)."""
    inserted = conn.execute(
        text(
            "INSERT INTO idempotency_keys (tenant_id, key, endpoint, request_hash, status_code, "
            "response) VALUES (:t, :k, :e, :h, :c, CAST(:r AS jsonb)) "
            # An expired key is taken over as if it were new.
            "ON CONFLICT (tenant_id, key) DO UPDATE SET endpoint = EXCLUDED.endpoint, "
            "request_hash = EXCLUDED.request_hash, status_code = EXCLUDED.status_code, "
            "response = EXCLUDED.response, created_at = now() "
            "WHERE idempotency_keys.created_at < now() - make_interval(secs => :ttl) "
            "RETURNING key"
        ),
        {
            "t": tenant_id,
            "k": idem.key,
            "e": idem.endpoint,
            "h": idem.request_hash,
            "c": idem.status_code,
            "r": json.dumps({**idem.response, "id": str(resource_id)}),
            "ttl": idem.ttl_s,
        },
    ).first()
    if inserted is not None:
        return
    row = conn.execute(
        text(
            "SELECT endpoint, request_hash, status_code, response FROM idempotency_keys "
            "WHERE tenant_id = :t AND key = :k"
        ),
        {"t": tenant_id, "k": idem.key},
    ).one()
    raise IdempotentReplay(StoredResponse(**row._asdict()))


def find_idempotent(
    engine: Engine, tenant_id: uuid.UUID, key: str, ttl_s: float
) -> StoredResponse | None:
    """Cheap early answer for a retry, before a big body is validated and copied again."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT endpoint, request_hash, status_code, response FROM idempotency_keys "
                "WHERE tenant_id = :t AND key = :k "
                "AND created_at >= now() - make_interval(secs => :ttl)"
            ),
            {"t": tenant_id, "k": key, "ttl": ttl_s},
        ).first()
    return StoredResponse(**row._asdict()) if row is not None else None


def delete_expired_idempotency_keys(conn: Connection, ttl_s: float, limit: int) -> int:
    """At most `limit` expired keys per call, so one reconciler tick stays short."""
    return conn.execute(
        text(
            "DELETE FROM idempotency_keys WHERE (tenant_id, key) IN (SELECT tenant_id, key "
            "FROM idempotency_keys WHERE created_at < now() - make_interval(secs => :ttl) "
            "LIMIT :limit)"
        ),
        {"ttl": ttl_s, "limit": limit},
    ).rowcount
