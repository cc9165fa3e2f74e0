"""What operators' probes read: whether Postgres answers (GET /readyz) and the jobs per status
(the `llmq_jobs` gauge of GET /metrics). Both are bounded so a probe never hangs on a busy
database; a failure raises SQLAlchemyError for the probe to report.
"""

from __future__ import annotations

from sqlalchemy import Engine, text

from llmq.store.models import JobStatus


def ping(engine: Engine) -> None:
    """One round trip to Postgres; raises SQLAlchemyError if it does not answer."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def job_counts(engine: Engine) -> dict[str, int]:
    """Jobs per status (every status present, 0 if none): one grouped count under a 2 s
    statement timeout, so a scrape never hangs on a busy table."""
    counts = {status.value: 0 for status in JobStatus}
    with engine.begin() as conn:  # SET LOCAL needs a transaction
        conn.execute(text("SET LOCAL statement_timeout = '2s'"))
        for status, n in conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")):
            counts[status] = int(n)
    return counts
