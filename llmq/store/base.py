"""What every store module shares: the autocommit connection for one-statement writes and
the SQL fragments several aggregates use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# Postgres refused or lost the connection (too many clients, a role's CONNECTION LIMIT, a
# restart, a statement timeout), or every pooled connection is busy: worth retrying later.
UNAVAILABLE: tuple[type[Exception], ...] = (OperationalError, PoolTimeout)


@contextlib.contextmanager
def autocommit(engine: Engine) -> Iterator[Connection]:
    """For writes that are one statement: run it in autocommit, which saves the BEGIN and
    COMMIT round trips on the hot path (the statement is atomic on its own)."""
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


ACTIVE_SQL = "('queued', 'running', 'retrying', 'waiting')"
