"""The provider Batch lane's thread in every worker: a tick every LLMQ_BATCH_LANE_INTERVAL_S,
one at a time across the fleet (llmq/execution/lane.py does the work). It polls upstream
batches between ticks by their next_poll_at, so no task thread ever waits on a provider."""

from __future__ import annotations

import logging
import threading

import redis
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from llmq import store
from llmq.execution.lane import LaneRunner
from llmq.providers.batch_api import BatchClient, batch_client_for
from llmq.settings import Settings

from .runtime import get_pipeline

log = logging.getLogger(__name__)


def make_runner(engine: Engine, settings: Settings) -> LaneRunner:
    clients: dict[str, BatchClient] = {}

    def client_for(provider: str) -> BatchClient:
        if provider not in clients:
            clients[provider] = batch_client_for(provider, settings)
        return clients[provider]

    return LaneRunner(engine, settings, get_pipeline(), client_for)


def tick(engine: Engine, runner: LaneRunner) -> bool:
    """One tick if no other worker is in one; True when it ran."""
    with store.lane_lock(engine) as mine:
        if mine:
            report = runner.tick()
            if report.uploaded or report.recovered or report.finished or report.to_sync:
                log.info(
                    "batch lane: %d uploaded, %d recovered, %d finished, %d to the sync lane",
                    report.uploaded, report.recovered, report.finished, len(report.to_sync),
                )  # fmt: skip
        return mine


class LaneThread:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmq-batch-lane", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        runner: LaneRunner | None = None
        while not self._stop.wait(self._settings.batch_lane_interval_s):
            try:
                runner = runner or make_runner(self._engine, self._settings)
                tick(self._engine, runner)
            except (SQLAlchemyError, redis.RedisError, OSError) as exc:
                # Postgres or Redis is down (or refusing connections): keep trying, as the
                # reconciler does; a traceback per tick would say nothing more.
                log.warning("batch lane tick failed: %s: %s", type(exc).__name__, exc)
            except Exception:
                log.exception("batch lane tick crashed")
