"""Every SQL statement has a timeout (LLMQ_DB_STATEMENT_TIMEOUT_S): Postgres cancels it and the
caller gets an OperationalError (the API answers 503, a worker retries) instead of waiting on a
stuck lock forever."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from llmq.settings import get_settings
from llmq.store.engine import get_engine


@pytest.fixture()
def short_timeout_engine(services: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("LLMQ_DB_STATEMENT_TIMEOUT_S", "0.5")
    get_settings.cache_clear()
    # Its own URL, so a new engine (engines are cached per URL) with this setting.
    separator = "&" if "?" in services.database_url else "?"
    engine = get_engine(f"{services.database_url}{separator}application_name=timeout-test")
    yield engine
    engine.dispose()
    get_settings.cache_clear()


def test_a_statement_past_the_timeout_is_cancelled(short_timeout_engine: Any) -> None:
    with short_timeout_engine.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "500ms"
        conn.rollback()  # the pool's reset rolls back too: the setting must survive it
    with short_timeout_engine.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "500ms"
        started = time.monotonic()
        with pytest.raises(OperationalError, match="statement timeout"):
            conn.execute(text("SELECT pg_sleep(5)"))
        assert time.monotonic() - started < 4  # cancelled, not waited out


def test_a_statement_waiting_on_a_stuck_lock_is_cancelled(
    short_timeout_engine: Any, services: Any
) -> None:
    holder = get_engine(services.database_url)  # no short timeout: it holds the lock
    with holder.connect() as stuck:
        stuck.execute(text("SELECT pg_advisory_xact_lock(424242)"))
        with short_timeout_engine.connect() as conn, pytest.raises(OperationalError):
            conn.execute(text("SELECT pg_advisory_xact_lock(424242)"))
        stuck.rollback()
