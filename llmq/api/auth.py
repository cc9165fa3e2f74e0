"""Bearer API keys -> the caller's tenant. Lookups are cached briefly to keep the DB off the
hot path; a revoked key stops working within AUTH_CACHE_S seconds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from fastapi import Request
from sqlalchemy import Engine

from llmq import store
from llmq.store import Principal

from .errors import ApiError
from .observability import record_tenant

AUTH_CACHE_S = 10.0


class Authenticator:
    def __init__(
        self, engine: Engine, on_failure: Callable[[Request, str], None] | None = None
    ) -> None:
        self._engine = engine
        self._on_failure = on_failure  # counts failures toward an audited burst (audit.py)
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def forget(self) -> None:
        """Drop every cached lookup (after a revoke, so it takes effect here at once)."""
        with self._lock:
            self._cache.clear()

    def __call__(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            self.failed(request, "missing")
            raise ApiError(
                401,
                "unauthorized",
                "missing API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        principal = self.principal_for_key(key.strip())
        if principal is None:
            self.failed(request, "invalid")
            raise ApiError(
                401,
                "unauthorized",
                "invalid or revoked API key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        record_tenant(request, principal.tenant_id)
        return principal

    def failed(self, request: Request, reason: str) -> None:
        """Note a failed authentication (never raises: see llmq/api/audit.py)."""
        if self._on_failure is not None:
            self._on_failure(request, reason)

    def principal_for_key(self, key: str) -> Principal | None:
        """The key's principal (None if unknown or revoked), through the short-lived cache."""
        digest = store.hash_key(key)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is None or cached[0] < now:
            principal = store.authenticate(self._engine, key)
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[digest] = (now + AUTH_CACHE_S, principal)
        else:
            principal = cached[1]
        return principal
