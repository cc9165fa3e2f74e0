"""Worker lifecycle: name the pipeline after the Celery node and start the reconciler."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from llmq.db.engine import get_engine
from llmq.settings import get_settings

from . import runtime
from .reconciler import Reconciler

log = logging.getLogger(__name__)
_reconciler: Reconciler | None = None


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    global _reconciler
    settings = get_settings()
    if sender is not None:
        runtime.worker_name = sender.hostname
    if settings.database_url:
        _reconciler = Reconciler(
            get_engine(settings.database_url), runtime.redis_client(settings), settings
        )
        _reconciler.start()
    log.info("worker %s ready", runtime.worker_name)


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    if _reconciler is not None:
        _reconciler.stop()
