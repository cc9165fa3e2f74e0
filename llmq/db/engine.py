"""One SQLAlchemy engine per process, built from DATABASE_URL."""

from __future__ import annotations

import threading

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

_lock = threading.Lock()
_engines: dict[str, Engine] = {}


def normalize_url(url: str) -> str:
    """Accept postgres:// and postgresql:// URLs and pin the psycopg 3 driver."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.drivername in ("postgresql", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def get_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20) -> Engine:
    key = normalize_url(url)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = create_engine(
                key,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_timeout=30,
                # A pooled connection may have died with a Postgres restart; check it before use.
                pool_pre_ping=True,
                pool_recycle=1800,
                connect_args={"connect_timeout": 5, "application_name": "llmq"},
            )
            _engines[key] = engine
        return engine


def dispose_all() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
