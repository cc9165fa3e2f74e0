"""Worker lifecycle: name the pipeline after the Celery node, start the reconciler, the
heartbeat and the metrics exporter."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import celeryd_after_setup, worker_ready, worker_shutdown

from llmq.resilience.redis_clients import redis_client
from llmq.settings import get_settings
from llmq.store.engine import get_engine, set_slots

from . import runtime, telemetry
from .heartbeat import Heartbeat
from .lane import LaneThread
from .reconciler import Reconciler

log = logging.getLogger(__name__)
_reconciler: Reconciler | None = None
_heartbeat: Heartbeat | None = None
_lane: LaneThread | None = None


def slots_per_process(concurrency: int, pool_module: str) -> int:
    """Jobs one process runs at once: all of them in a threads or gevent pool, one per child
    process under prefork (each child has its own engine) or solo."""
    if pool_module.endswith((".prefork", ".solo")):
        return 1
    return concurrency


@celeryd_after_setup.connect
def _on_setup(instance: Any = None, **_: Any) -> None:
    # Before any engine exists: the pool is sized from --concurrency as Celery resolved it.
    if instance is not None and getattr(instance, "concurrency", None):
        pool_module = getattr(instance.pool_cls, "__module__", str(instance.pool_cls))
        set_slots(slots_per_process(int(instance.concurrency), pool_module))


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    global _reconciler, _heartbeat, _lane
    settings = get_settings()
    if sender is not None:
        runtime.worker_name = sender.hostname
    if settings.database_url:
        _reconciler = Reconciler(
            get_engine(settings.database_url), redis_client(settings), settings
        )
        _reconciler.start()
        _lane = LaneThread(get_engine(settings.database_url), settings)
        _lane.start()
    if settings.redis_url:
        consumer = getattr(sender, "task_consumer", None)
        queues = sorted(q.name for q in getattr(consumer, "queues", []))
        _heartbeat = Heartbeat(
            redis_client(settings), runtime.worker_name, queues, settings.worker_heartbeat_s
        )
        _heartbeat.start()
    telemetry.start_metrics_server(settings.worker_metrics_port, settings.worker_metrics_host)
    log.info("worker %s ready", runtime.worker_name)


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    if _reconciler is not None:
        _reconciler.stop()
    if _lane is not None:
        _lane.stop()
    if _heartbeat is not None:
        _heartbeat.stop()
    runtime.close_pipeline()
