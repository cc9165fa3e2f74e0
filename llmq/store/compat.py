"""The OpenAI Files/Batches and Anthropic Message Batches surfaces' own rows."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text

from llmq.store import crypto
from llmq.store.base import autocommit
from llmq.store.submission import NewJob, insert_batch

COMPAT_BATCH_COLUMNS = (
    "id, api, batch_id, input_file_id, endpoint, completion_window, model, metadata, errors, "
    "created_at"
)


def insert_compat_file(
    engine: Engine,
    tenant_id: uuid.UUID,
    filename: str,
    purpose: str,
    content: bytes,
    size: int | None = None,
) -> dict[str, Any]:
    """`size` is the file's size as downloaded when that differs from the stored `content`."""
    with autocommit(engine) as conn:
        row = conn.execute(
            text(
                "INSERT INTO compat_files (id, tenant_id, filename, purpose, bytes, content) "
                "VALUES (:id, :t, :filename, :purpose, :bytes, :content) "
                "RETURNING id, filename, purpose, bytes, created_at"
            ),
            {"id": uuid.uuid4(), "t": tenant_id, "filename": filename, "purpose": purpose,
             "bytes": len(content) if size is None else size,
             "content": crypto.encrypt_bytes(content)},
        ).mappings().one()  # fmt: skip
    return dict(row)


def get_compat_file(
    engine: Engine, tenant_id: uuid.UUID, file_id: uuid.UUID, *, with_content: bool = False
) -> dict[str, Any] | None:
    columns = "id, filename, purpose, bytes, created_at" + (", content" if with_content else "")
    with engine.connect() as conn:
        row = (
            conn.execute(
                text(f"SELECT {columns} FROM compat_files WHERE id = :id AND tenant_id = :t"),
                {"id": file_id, "t": tenant_id},
            )
            .mappings()
            .first()
        )
    if row is None:
        return None
    found = dict(row)
    if with_content and found["content"] is not None:
        found["content"] = crypto.decrypt_bytes(bytes(found["content"]))
    return found


@dataclass(frozen=True)
class CompatBatchRecord:
    api: str  # "openai" | "anthropic"
    input_file_id: str | None = None
    endpoint: str | None = None
    completion_window: str | None = None
    model: str | None = None
    meta: dict[str, Any] | None = None
    errors: list[dict[str, Any]] | None = None  # set: the batch failed validation, no jobs


def _insert_compat_batch(
    conn: Connection,
    tenant_id: uuid.UUID,
    record: CompatBatchRecord,
    record_id: uuid.UUID,
    batch_id: uuid.UUID | None,
) -> None:
    conn.execute(
        text(
            "INSERT INTO compat_batches (id, tenant_id, api, batch_id, input_file_id, endpoint, "
            "completion_window, model, metadata, errors) VALUES (:id, :t, :api, :batch_id, "
            ":input_file_id, :endpoint, :completion_window, :model, CAST(:meta AS jsonb), "
            "CAST(:errors AS jsonb))"
        ),
        {"id": record_id, "t": tenant_id, "api": record.api, "batch_id": batch_id,
         "input_file_id": record.input_file_id, "endpoint": record.endpoint,
         "completion_window": record.completion_window, "model": record.model,
         "meta": json.dumps(record.meta or {}),
         "errors": json.dumps(record.errors) if record.errors is not None else None},
    )  # fmt: skip


def create_compat_batch(
    engine: Engine,
    *,
    tenant_id: uuid.UUID,
    record: CompatBatchRecord,
    chain: list[str],
    priority: str,
    items: Sequence[NewJob],
    rejected: dict[int, tuple[str, str]] | None = None,
    lane: str = "sync",
) -> uuid.UUID:
    """The compat record and its native batch in one transaction. Items listed in `rejected`
    (position -> (error code, message)) are stored already failed, so they are never run but
    still answer in the results. A record with `errors` gets no native batch at all."""
    if record.errors is not None:
        record_id = uuid.uuid4()
        with engine.begin() as conn:
            _insert_compat_batch(conn, tenant_id, record, record_id, None)
        return record_id

    def also(conn: Connection, batch_id: uuid.UUID) -> None:
        _insert_compat_batch(conn, tenant_id, record, batch_id, batch_id)
        if rejected:
            conn.execute(
                text(
                    "UPDATE jobs SET status = 'failed', error_code = r.code, "
                    "error_message = r.message, finished_at = now() "
                    "FROM unnest(CAST(:seqs AS int[]), CAST(:codes AS text[]), "
                    "CAST(:messages AS text[])) AS r(seq, code, message) "
                    "WHERE jobs.batch_id = :b AND jobs.seq = r.seq"
                ),
                {"b": batch_id, "seqs": list(rejected),
                 "codes": [c for c, _ in rejected.values()],
                 "messages": [m for _, m in rejected.values()]},
            )  # fmt: skip

    return insert_batch(
        engine, tenant_id=tenant_id, template="chat", template_version=1, priority=priority,
        chain=chain, meta=record.meta or {}, items=items, also=also, lane=lane,
    )  # fmt: skip


def get_compat_batch(
    engine: Engine, tenant_id: uuid.UUID, api: str, record_id: uuid.UUID
) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = (
            conn.execute(
                text(
                    f"SELECT {COMPAT_BATCH_COLUMNS} FROM compat_batches WHERE id = :id "
                    "AND tenant_id = :t AND api = :api AND deleted_at IS NULL"
                ),
                {"id": record_id, "t": tenant_id, "api": api},
            )
            .mappings()
            .first()
        )
    return dict(row) if row is not None else None


def list_compat_batches(
    engine: Engine,
    tenant_id: uuid.UUID,
    api: str,
    *,
    limit: int,
    after: uuid.UUID | None = None,
    before: uuid.UUID | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Newest first, a page at a time; `after`/`before` are ids of the previous page's ends.
    Returns the page and whether more exist beyond it (in the direction of travel)."""
    cursor, direction = (after, "<") if before is None else (before, ">")
    where = "tenant_id = :t AND api = :api AND deleted_at IS NULL"
    if cursor is not None:
        where += (
            f" AND (created_at, id) {direction} (SELECT created_at, id FROM compat_batches "
            "WHERE id = :cursor AND tenant_id = :t)"
        )
    order = "DESC" if direction == "<" else "ASC"
    with engine.connect() as conn:
        rows = [
            dict(r)
            for r in conn.execute(
                text(
                    f"SELECT {COMPAT_BATCH_COLUMNS} FROM compat_batches WHERE {where} "
                    f"ORDER BY created_at {order}, id {order} LIMIT :n"
                ),
                {"t": tenant_id, "api": api, "cursor": cursor, "n": limit + 1},
            ).mappings()
        ]
    has_more = len(rows) > limit
    rows = rows[:limit]
    if direction == ">":
        rows.reverse()
    return rows, has_more


def delete_compat_batch(
    engine: Engine, tenant_id: uuid.UUID, api: str, record_id: uuid.UUID
) -> bool:
    """Hide the batch and drop its inputs and outputs; attempts (usage and cost) are kept."""
    with engine.begin() as conn:
        batch_id = conn.execute(
            text(
                "UPDATE compat_batches SET deleted_at = now() WHERE id = :id AND tenant_id = :t "
                "AND api = :api AND deleted_at IS NULL RETURNING batch_id"
            ),
            {"id": record_id, "t": tenant_id, "api": api},
        ).first()
        if batch_id is None:
            return False
        if batch_id[0] is not None:
            conn.execute(
                text("UPDATE jobs SET input = '', result = NULL WHERE batch_id = :b"),
                {"b": batch_id[0]},
            )
    return True
