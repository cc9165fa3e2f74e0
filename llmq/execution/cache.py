"""Exact-match result cache in Redis. A cache outage never fails a job: it is logged and skipped."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from llmq.settings import CacheScope
from llmq.store import crypto
from llmq.telemetry.metrics import CACHE_LOOKUPS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedResult:
    text: str
    provider: str
    model: str


def cache_key(
    chain: list[str],
    template: str,
    version: int,
    rendered: Any,
    params: dict[str, Any],
    *,
    scope: CacheScope,
    tenant_id: uuid.UUID | str,
) -> str:
    """The Redis key of an answer. Under the "tenant" scope the tenant is part of the material,
    so neither the cached answer nor the in-flight lock (llmq/execution/dedup.py) is shared across
    tenants; "global" leaves the tenant out and gives the keys used before scopes existed.
    With LLMQ_ENCRYPTION_KEYS the digest is keyed (crypto.digest), over the plaintext material:
    identical jobs still meet, a key in Redis confirms no guess of a document."""
    fields: dict[str, Any] = {
        "chain": chain,
        "template": template,
        "version": version,
        "prompt": rendered,
        "params": params,
    }
    if scope == "tenant":
        fields["tenant"] = str(tenant_id)
    elif scope != "global":  # fail closed: an unknown scope must not quietly share answers
        raise ValueError(f"unknown cache scope {scope!r}")
    material = json.dumps(
        fields,
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return "llmq:cache:" + crypto.digest(material.encode())


class ResultCache:
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self.errors = 0

    def get(self, key: str) -> CachedResult | None:
        try:
            raw = self._client.get(key)
        except redis.RedisError as exc:
            self.errors += 1
            CACHE_LOOKUPS.labels("error").inc()
            log.warning("cache unavailable, continuing without it: %s", type(exc).__name__)
            return None
        return self.found(raw)

    def found(self, raw: bytes | str | None) -> CachedResult | None:
        """Count a lookup (made here, or by the in-flight script in llmq/execution/dedup.py) and
        decode its value."""
        CACHE_LOOKUPS.labels("miss" if raw is None else "hit").inc()
        if raw is None:
            return None
        data = json.loads(crypto.decrypt(raw.decode() if isinstance(raw, bytes) else raw))
        return CachedResult(text=data["text"], provider=data["provider"], model=data["model"])

    def put(self, key: str, value: CachedResult) -> None:
        try:
            sealed = crypto.encrypt(json.dumps(value.__dict__))
            self._client.set(key, sealed, ex=self._ttl_s)
        except redis.RedisError as exc:
            self.errors += 1
            log.warning("cache unavailable, result not cached: %s", type(exc).__name__)
