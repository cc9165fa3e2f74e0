"""Puts lost work back: expired leases (dead workers), never-published jobs (crash between
INSERT and publish), jobs due after a long backoff, jobs whose queue is empty although their
message was published long ago, and everything live after the broker lost its messages (Redis
restart or FLUSHALL). Runs as a thread in every worker; a Postgres advisory lock
lets one tick run at a time, so it needs no extra process and survives any worker dying.
"""

from __future__ import annotations

import logging
import threading
import uuid

import redis
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from llmq import store
from llmq.longdocs import mapreduce
from llmq.settings import PRIORITY_TO_QUEUE, Settings

from . import batch_upkeep
from .dispatch import publish_jobs
from .queues import queue_depths
from .runtime import long_documents

log = logging.getLogger(__name__)

BROKER_EPOCH_KEY = "llmq:broker-epoch"
DISPATCH_LIMIT = 5000


def broker_lost_messages(client: redis.Redis) -> bool:
    """True the first time we look after the broker's data vanished (or on its first use)."""
    return bool(client.set(BROKER_EPOCH_KEY, uuid.uuid4().hex, nx=True))


def tick(
    engine: Engine, client: redis.Redis, settings: Settings, after_outage: bool = False
) -> dict[str, int]:
    with engine.begin() as conn:
        if not store.try_reconcile_lock(conn):
            return {}
        if after_outage:
            # No worker could renew a lease while Postgres was unreachable: give every running
            # job a fresh one rather than take work (and paid answers) from live workers.
            store.extend_leases(conn, settings.job_lease_s)
            expired = []
        else:
            expired = store.expire_leases(conn, settings.max_deliveries)
        forgotten = store.forget_dispatches(conn) if broker_lost_messages(client) else 0
        depths = queue_depths(client)
        empty = [p for p, queue in PRIORITY_TO_QUEUE.items() if depths[queue] == 0]
        stale = store.forget_stale_dispatches(conn, empty, settings.redispatch_after_s)
        due = store.take_due_for_dispatch(conn, settings.dispatch_grace_s, DISPATCH_LIMIT)
        upkeep = batch_upkeep.collect(conn, settings)
    # Published after COMMIT so no row stays locked while Redis is busy; on failure the jobs
    # are unmarked and the next tick tries again (a duplicate message is harmless).
    try:
        publish_jobs(due)
    except Exception:
        store.undo_dispatch(engine, [job_id for job_id, _ in due])
        raise
    batch_upkeep.publish(upkeep, client)
    # Long documents whose last child ended without advancing the parent (a crash in between).
    advanced = mapreduce.sweep(engine, long_documents(settings, engine))
    stats = {
        "webhooks": len(upkeep.webhooks_due),
        "advanced": advanced,
        "requeued": sum(1 for _, status, _ in expired if status == "queued"),
        "failed": sum(1 for _, status, _ in expired if status == "failed"),
        "forgotten": forgotten + stale,
        "published": len(due),
    }
    if any(stats.values()):
        log.info("reconciler: %s", stats)
    return stats


class Reconciler:
    def __init__(self, engine: Engine, client: redis.Redis, settings: Settings) -> None:
        self._engine = engine
        self._client = client
        self._settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmq-reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        # The first tick runs at once: on a fresh broker it records the broker's epoch before
        # any work arrives. Later, it would mistake the messages of a batch published in the
        # meantime for lost ones and publish every one of them again (harmless, but doubled).
        first = True
        db_down = False
        while first or not self._stop.wait(self._settings.reconcile_interval_s):
            first = False
            try:
                tick(self._engine, self._client, self._settings, after_outage=db_down)
                db_down = False
            except (SQLAlchemyError, redis.RedisError, OSError) as exc:
                # Postgres or Redis is down: keep trying, that is the point of this loop.
                db_down = db_down or isinstance(exc, SQLAlchemyError)
                log.warning("reconciler tick failed: %s: %s", type(exc).__name__, exc)
            except Exception:
                log.exception("reconciler tick crashed")
