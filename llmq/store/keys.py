"""Tenants and API keys: creation, authentication, listing and revocation."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from llmq.errors import UserError
from llmq.store.audit import AuditEvent, append_event

KEY_PREFIX = "llmq_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(
    engine: Engine,
    tenant_name: str,
    *,
    admin: bool = False,
    requests_per_min: int | None = None,
    items_per_min: int | None = None,
    actor: str = "system",
) -> str:
    """Create the tenant if needed and return a new key. The key is shown once, stored hashed.
    The audit row (`key.created`, by `actor`: an admin key's id, "cli" or "system") is written
    in the same transaction: no key exists without one."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = uuid.uuid4()
    with engine.begin() as conn:
        tenant_id = conn.execute(
            text(
                "INSERT INTO tenants (id, name) VALUES (:id, :name) "
                "ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id"
            ),
            {"id": uuid.uuid4(), "name": tenant_name},
        ).scalar_one()
        conn.execute(
            text(
                "INSERT INTO api_keys (id, tenant_id, key_hash, prefix, is_admin, "
                "rate_requests_per_min, rate_items_per_min) "
                "VALUES (:id, :tenant_id, :key_hash, :prefix, :admin, :rpm, :ipm)"
            ),
            {
                "id": key_id,
                "tenant_id": tenant_id,
                "key_hash": hash_key(key),
                "prefix": key[: len(KEY_PREFIX) + 6],
                "admin": admin,
                "rpm": requests_per_min,
                "ipm": items_per_min,
            },
        )
        details = {"tenant": tenant_name, "admin": admin, "requests_per_min": requests_per_min,
                   "items_per_min": items_per_min}  # fmt: skip
        append_event(conn, AuditEvent(actor, "key.created", tenant_id, str(key_id), details))
    return key


@dataclass(frozen=True)
class Principal:
    tenant_id: uuid.UUID
    tenant_name: str
    key_id: uuid.UUID
    is_admin: bool
    # The key's own per-minute limits; None = the settings' defaults.
    requests_per_min: int | None = None
    items_per_min: int | None = None


def authenticate(engine: Engine, key: str) -> Principal | None:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT k.id, k.tenant_id, k.is_admin, t.name, k.rate_requests_per_min, "
                "k.rate_items_per_min FROM api_keys k "
                "JOIN tenants t ON t.id = k.tenant_id "
                "WHERE k.key_hash = :h AND k.revoked_at IS NULL"
            ),
            {"h": hash_key(key)},
        ).first()
    if row is None:
        return None
    return Principal(
        tenant_id=row.tenant_id,
        tenant_name=row.name,
        key_id=row.id,
        is_admin=row.is_admin,
        requests_per_min=row.rate_requests_per_min,
        items_per_min=row.rate_items_per_min,
    )


def tenant_id_by_name(engine: Engine, name: str) -> uuid.UUID | None:
    """The id of the tenant named `name` (tenants are created with their first key)."""
    with engine.connect() as conn:
        tenant_id: uuid.UUID | None = conn.execute(
            text("SELECT id FROM tenants WHERE name = :n"), {"n": name}
        ).scalar_one_or_none()
    return tenant_id


_KEY_ROWS = (
    "SELECT k.id, k.prefix, t.name AS tenant, k.is_admin, k.created_at, k.revoked_at, "
    "k.rate_requests_per_min AS requests_per_min, k.rate_items_per_min AS items_per_min "
    "FROM api_keys k JOIN tenants t ON t.id = k.tenant_id "
)


def list_api_keys(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(text(_KEY_ROWS + "ORDER BY k.created_at")).mappings()
        return [dict(row) for row in rows]


# A reference shorter than this names too little to be sure which key is meant (an id's first
# group is 8 characters; a key's first 8 are "llmq_" and 3 random ones).
MIN_KEY_REF_CHARS = 8


class KeyRefError(UserError):
    """A revoke that names no single active key."""


class LastAdminKey(UserError):
    """Revoking this key would leave no active admin key: nobody could manage keys over HTTP."""


def revoke_api_key(engine: Engine, ref: str, *, actor: str = "system") -> uuid.UUID:
    """Revoke the one active key `ref` names: its id or a prefix of it, a prefix of the key
    (the 11 characters `keys list` shows, or more), or the whole key. Never the last active
    admin key: the active admin rows are locked first, so of two concurrent revokes of the
    last two admin keys the second sees the first one's result and is refused."""
    ref = ref.strip()
    if len(ref) < MIN_KEY_REF_CHARS:
        raise KeyRefError(f"give at least {MIN_KEY_REF_CHARS} characters of the key or its id")
    with engine.begin() as conn:
        # starts_with, not LIKE: "_" in "llmq_" would be a wildcard. Only 11 characters of a
        # key are stored in the clear, so a longer prefix is matched on those (or its hash).
        rows = conn.execute(
            text(
                "SELECT id, tenant_id, is_admin, key_hash = :hash AS exact FROM api_keys "
                "WHERE revoked_at IS NULL AND (starts_with(id::text, lower(:ref)) "
                "OR starts_with(prefix, :ref) OR starts_with(:ref, prefix) OR key_hash = :hash)"
            ),
            {"ref": ref, "hash": hash_key(ref)},
        ).all()
        exact = [row for row in rows if row.exact]
        if len(exact) == 1:
            rows = exact
        if not rows:
            raise KeyRefError(f"no active key matches {ref!r}")
        if len(rows) > 1:
            raise KeyRefError(
                f"{ref!r} matches {len(rows)} active keys; give more of it or the key's id "
                "(llmq keys list)"
            )
        key_id, is_admin = rows[0].id, rows[0].is_admin
        if is_admin:
            admins = (
                conn.execute(
                    text(
                        "SELECT id FROM api_keys WHERE is_admin AND revoked_at IS NULL "
                        "ORDER BY id FOR UPDATE"
                    )
                )
                .scalars()
                .all()
            )
            if admins == [key_id]:
                raise LastAdminKey(
                    f"key {key_id} is the last active admin key; create another admin key "
                    "first (llmq keys create --admin), then revoke this one"
                )
        revoked = conn.execute(
            text("UPDATE api_keys SET revoked_at = now() WHERE id = :id AND revoked_at IS NULL"),
            {"id": key_id},
        ).rowcount
        if not revoked:  # revoked by a concurrent call since it was found
            raise KeyRefError(f"no active key matches {ref!r}")
        append_event(
            conn,
            AuditEvent(actor, "key.revoked", rows[0].tenant_id, str(key_id), {"admin": is_admin}),
        )
        return uuid.UUID(str(key_id))


def get_api_key_by_hash(engine: Engine, key_hash: str) -> dict[str, Any] | None:
    """The listing row of one key (never the key itself), found by its hash."""
    with engine.connect() as conn:
        row = (
            conn.execute(
                text(_KEY_ROWS + "WHERE k.key_hash = :h"),
                {"h": key_hash},
            )
            .mappings()
            .first()
        )
    return dict(row) if row else None
