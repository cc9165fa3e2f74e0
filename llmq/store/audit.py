"""The audit log: an append-only, hash-chained record of security events (who created or
revoked a key, changed a budget, downloaded results, rotated a webhook secret, ...).

Each row's `hash` is sha256(prev_hash || canonical JSON of its id, time, actor, tenant, action,
target and details), and `prev_hash` is the hash of the row before it. Appends are serialized
by a transaction-scoped advisory lock, so two writers never read the same predecessor and fork
the chain. An edited row no longer matches its hash; a deleted or reordered row breaks the next
row's `prev_hash`; `verify_chain` finds either. A trigger (migration 0009_audit_log) refuses
UPDATE, DELETE and TRUNCATE for every role, so the chain is the second line of defence, for
whoever can disable the trigger.

An event is written in the same transaction as the action it records where the action is a
database write (key created or revoked, budget set, webhook secret rotated): the action and its
row commit together or not at all. Reads (downloads) record first and serve after, so a failed
audit write refuses the download. Never put secrets or document text in `details`:
`check_details` refuses keys that name one and long strings.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from llmq.errors import UserError

# pg_advisory_xact_lock key of the append: "llmqaudt" (the reconciler's is "llmq").
AUDIT_LOCK_KEY = 0x6C6C6D7161756474
GENESIS_HASH = "0" * 64

# The vocabulary: a small fixed set, so a filter or an alert can name every action.
ACTIONS = frozenset(
    {
        "key.created",
        "key.revoked",
        "admin.keys_listed",
        "admin.audit_read",
        "admin.job_cancelled",
        "admin.job_retried",
        "budget.set",
        "results.downloaded",
        "file.downloaded",
        "webhook_secret.created",
        "webhook_secret.rotated",
        "auth.failed_burst",
    }
)

# Detail keys that would name a secret or carry document text: refused outright.
FORBIDDEN_DETAIL_KEYS = frozenset(
    {"key", "api_key", "secret", "salt", "token", "password", "content", "input", "text",
     "result", "prompt", "output", "authorization"}
)  # fmt: skip
MAX_DETAIL_STRING = 200


@dataclass(frozen=True)
class AuditEvent:
    actor: str  # an API key id, "cli" or "system"
    action: str  # one of ACTIONS
    tenant_id: uuid.UUID | None = None
    target: str | None = None  # what was acted on: a key id, batch id, file id, client IP
    details: dict[str, Any] = field(default_factory=dict)


def check_details(details: dict[str, Any]) -> None:
    """Refuse details that could carry a secret or document text (a programming error)."""
    for name, value in details.items():
        if name.lower() in FORBIDDEN_DETAIL_KEYS:
            raise ValueError(f"audit details may not carry {name!r}")
        values = value if isinstance(value, list) else [value]
        for item in values:
            if not isinstance(item, str | int | float | bool | type(None)):
                raise ValueError(f"audit detail {name!r} must be a scalar or a list of scalars")
            if isinstance(item, str) and len(item) > MAX_DETAIL_STRING:
                raise ValueError(f"audit detail {name!r} is longer than {MAX_DETAIL_STRING}")


def _canonical(row: dict[str, Any]) -> bytes:
    """The hashed form of a row: sorted keys, no whitespace, UTC time to the microsecond."""
    at: datetime = row["at"]
    fields = {
        "id": int(row["id"]),
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": row["actor"],
        "tenant_id": str(row["tenant_id"]) if row["tenant_id"] is not None else None,
        "action": row["action"],
        "target": row["target"],
        "details": row["details"],
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def row_hash(prev_hash: str, row: dict[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + _canonical(row)).hexdigest()


def append_event(conn: Connection, event: AuditEvent) -> int:
    """Append one event as a step of the caller's transaction (never commits); its id.
    The advisory lock is held until that transaction ends, so the chain stays one line."""
    if event.action not in ACTIONS:
        raise ValueError(f"unknown audit action {event.action!r}")
    check_details(event.details)
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK_KEY})
    prev = conn.execute(
        text("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1")
    ).scalar_one_or_none()
    # clock_timestamp, not now(): under the lock, time then increases with the id.
    row_id, at = conn.execute(
        text("SELECT nextval(pg_get_serial_sequence('audit_log', 'id')), clock_timestamp()")
    ).one()
    row = {
        "id": row_id,
        "at": at,
        "actor": event.actor,
        "tenant_id": event.tenant_id,
        "action": event.action,
        "target": event.target,
        "details": event.details,
    }
    prev_hash = prev or GENESIS_HASH
    conn.execute(
        text(
            "INSERT INTO audit_log (id, at, actor, tenant_id, action, target, details, "
            "prev_hash, hash) VALUES (:id, :at, :actor, :tenant_id, :action, :target, "
            "CAST(:details AS jsonb), :prev_hash, :hash)"
        ),
        {**row, "details": json.dumps(event.details), "prev_hash": prev_hash,
         "hash": row_hash(prev_hash, row)},
    )  # fmt: skip
    return int(row_id)


def record_event(engine: Engine, event: AuditEvent) -> int:
    """Append one event in its own transaction; raises if it cannot be written."""
    with engine.begin() as conn:
        return append_event(conn, event)


# ---------------------------------------------------------------------------------------------
# Reading


class CursorError(UserError):
    """A pagination cursor this module did not issue."""


def encode_cursor(row_id: int) -> str:
    return base64.urlsafe_b64encode(f"audit:{row_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = raw.partition(":")
        if prefix != "audit" or not number.isdigit():
            raise ValueError
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise CursorError(f"malformed cursor {cursor!r}: pass next_cursor as returned") from None


_COLUMNS = "id, at, actor, tenant_id, action, target, details, prev_hash, hash"


def list_events(
    engine: Engine,
    *,
    action: str | None = None,
    tenant_id: uuid.UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Newest first. `action` is exact, or a family with a trailing '*' ('admin.*');
    `before_id` continues a listing (the cursor); `until` is exclusive."""
    where: list[str] = ["true"]
    params: dict[str, Any] = {"limit": limit}
    if action is not None:
        if action.endswith("*"):
            where.append("starts_with(action, :action)")
            params["action"] = action[:-1]
        else:
            where.append("action = :action")
            params["action"] = action
    filters = {"tenant_id": tenant_id, "since": since, "until": until, "before": before_id}
    clauses = {"tenant_id": "tenant_id = :tenant_id", "since": "at >= :since",
               "until": "at < :until", "before": "id < :before"}  # fmt: skip
    for name, value in filters.items():
        if value is not None:
            where.append(clauses[name])
            params[name] = value
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT {_COLUMNS} FROM audit_log WHERE {' AND '.join(where)} "
                "ORDER BY id DESC LIMIT :limit"
            ),
            params,
        ).mappings()
        return [dict(r) for r in rows]


@dataclass(frozen=True)
class ChainReport:
    rows: int  # rows checked (up to the first broken one)
    broken_id: int | None  # the first row that fails, None if the chain is intact
    reason: str | None
    head_hash: str  # the last row's hash: record it elsewhere to detect a truncated tail


def verify_chain(engine: Engine, batch_size: int = 1000) -> ChainReport:
    """Walk the whole log in id order, `batch_size` rows per query (memory stays flat), and
    stop at the first row whose hash or link is wrong."""
    expected_prev, last_id, checked = GENESIS_HASH, 0, 0
    with engine.connect() as conn:
        while True:
            rows = (
                conn.execute(
                    text(
                        f"SELECT {_COLUMNS} FROM audit_log WHERE id > :after ORDER BY id LIMIT :n"
                    ),
                    {"after": last_id, "n": batch_size},
                )
                .mappings()
                .all()
            )
            if not rows:
                return ChainReport(checked, None, None, expected_prev)
            for row in rows:
                if row["prev_hash"] != expected_prev:
                    before = f"row {last_id}" if last_id else "the start of the log"
                    return ChainReport(
                        checked, row["id"], f"row {row['id']}: its prev_hash does not match "
                        f"{before}: a row between them was deleted, or rows were reordered "
                        "or inserted out of band", expected_prev
                    )  # fmt: skip
                if row_hash(row["prev_hash"], dict(row)) != row["hash"]:
                    return ChainReport(
                        checked, row["id"], f"row {row['id']}: its contents do not match its "
                        "hash: the row was edited", expected_prev
                    )  # fmt: skip
                expected_prev, last_id = row["hash"], row["id"]
                checked += 1
