"""One SQLAlchemy engine per process, built from DATABASE_URL."""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from llmq.settings import Settings, get_settings

log = logging.getLogger(__name__)
_lock = threading.Lock()
_engines: dict[str, Engine] = {}
# Jobs this process runs at once, as its worker was started (set before the first engine).
_slots: int | None = None
# The process's own threads that use the database beside its slots (lease keeper, reconciler,
# batch upkeep, budgets reconciliation, long-document sweep).
OWN_CONNECTIONS = 5
# An API process runs its sync handlers in anyio's thread pool, at most 40 at once (its
# default limiter): its pool needs that many, not a worker's concurrency.
API_SLOTS = 40


def set_slots(slots: int) -> None:
    """Size the pools of engines made from now on for `slots` concurrent users: the Celery
    worker's concurrency as started (whatever LLMQ_WORKER_CONCURRENCY says), or the API's
    thread pool (API_SLOTS)."""
    global _slots
    _slots = max(1, slots)


def pool_limits(settings: Settings, slots: int | None = None) -> tuple[int, int]:
    """(pool_size, max_overflow): LLMQ_DB_POOL_SIZE, or one connection per slot plus the
    process's own; connections are opened lazily, so an idle process holds few."""
    if settings.db_pool_size > 0:
        return settings.db_pool_size, settings.db_max_overflow
    return (slots or settings.worker_concurrency) + OWN_CONNECTIONS, settings.db_max_overflow


def normalize_url(url: str) -> str:
    """Accept postgres:// and postgresql:// URLs and pin the psycopg 3 driver."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.drivername in ("postgresql", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def get_engine(url: str) -> Engine:
    """The process's engine for `url`. The pool holds one connection per worker slot (plus
    the lease keeper and reconciler, see pool_limits): overflow connections are opened and
    closed per use, and a PostgreSQL backend per transaction costs more than the transaction
    itself. Connections are opened lazily, so a process that needs few opens few."""
    settings = get_settings()
    pool_size, max_overflow = pool_limits(settings, _slots)
    connect_args: dict[str, Any] = {"connect_timeout": 5, "application_name": "llmq"}
    if not settings.db_prepared_statements:
        # PgBouncer < 1.21 in transaction mode hands each transaction any server connection,
        # where psycopg's prepared statements do not exist.
        connect_args["prepare_threshold"] = None
    key = normalize_url(url)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = create_engine(
                key,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_timeout=30,
                # No pre-ping (a round trip per checkout on the hot path): a connection that died
                # with a Postgres restart fails its statement, SQLAlchemy then discards the
                # whole pool, and the caller's retry (task autoretry, lease expiry, the API's
                # 503 + Retry-After) gets fresh connections.
                pool_pre_ping=False,
                pool_recycle=1800,
                connect_args=connect_args,
            )
            log.info(
                "database pool: %d connections + %d overflow (LLMQ_DB_POOL_SIZE, "
                "LLMQ_DB_MAX_OVERFLOW)",
                pool_size,
                max_overflow,
            )
            if settings.db_statement_timeout_s > 0:
                _bound_statements(engine, settings.db_statement_timeout_s)
            _engines[key] = engine
        return engine


def _bound_statements(engine: Engine, timeout_s: float) -> None:
    """Every statement on this engine's connections ends after `timeout_s` (Postgres cancels
    it; callers see an OperationalError: the API's 503, a worker's retry). Set per session when
    a connection opens, not as a libpq startup option, which PgBouncer refuses."""
    milliseconds = max(1, round(timeout_s * 1000))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True  # so the SET outlives the pool's reset rollback
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET statement_timeout = {milliseconds}")
        dbapi_connection.autocommit = autocommit


def dispose_all() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
