"""Faults injected into PostgreSQL itself, for the chaos scenarios (llmq/testing/chaos.py).

The one function here takes a database URL, not an Engine: it acts on that database from the
server's maintenance database `postgres` (a database cannot refuse connections to itself
through one of its own), so it builds its own short-lived engine there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


@contextmanager
def connections_refused(database_url: str) -> Iterator[None]:
    """Postgres refuses every connection to the database of `database_url` and drops the open
    ones, as `too many clients`, a role's CONNECTION LIMIT or a restart do to llmq; run from
    the `postgres` database, so it works on the embedded and on an external server (as a
    superuser or the database's owner)."""
    url = make_url(database_url)
    name = url.database
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": name},
            )
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
        admin.dispose()
