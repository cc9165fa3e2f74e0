"""Keeps the Postgres leases of in-flight jobs fresh while their worker is alive.

A worker that dies stops renewing; the reconciler then sees the lease expire and re-queues the
job. The lease can therefore be short (fast recovery) while a provider call is long.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator

from sqlalchemy.exc import SQLAlchemyError

from llmq.execution.job_store import JobStore

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, jobs: JobStore, lease_s: float) -> None:
        self._jobs = jobs
        self._lease_s = lease_s
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def hold(self, job_id: uuid.UUID, owner: str) -> Iterator[None]:
        self._ensure_started()
        with self._lock:
            self._held[str(job_id)] = owner
        try:
            yield
        finally:
            with self._lock:
                # A job handed back and woken at once may already be held by another thread
                # under a new owner: leave that one's renewal in place.
                if self._held.get(str(job_id)) == owner:
                    del self._held[str(job_id)]

    def _ensure_started(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="llmq-lease-keeper", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            with self._lock:
                held = dict(self._held)
            try:
                self._jobs.renew_leases(held, self._lease_s)
            except SQLAlchemyError as exc:
                log.warning("could not renew %d leases: %s", len(held), type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
