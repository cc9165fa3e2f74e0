"""The Celery application: queues, routing and the delivery guarantees llmq relies on."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from llmq.settings import QUEUES, Settings, get_settings


def make_celery(broker_url: str | None = None) -> Celery:
    app = Celery("llmq", include=["llmq.tasks.jobs", "llmq.tasks.webhooks"])
    # The configuration is read when the app is first used, not when this module is imported,
    # so a process that sets REDIS_URL after importing llmq still talks to its own broker.
    app.add_defaults(lambda: celery_config(get_settings(), broker_url))
    return app


def celery_config(settings: Settings, broker_url: str | None = None) -> dict[str, Any]:
    visibility_timeout = max(3600, int(settings.job_deadline_s * 2))
    return dict(
        broker_url=broker_url or settings.redis_url or "redis://127.0.0.1:6379/0",
        task_queues=[
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES
        ],
        task_default_queue="llm.default",
        broker_transport_options={
            # Unacked messages come back after this; longer than any job (celery #7651).
            "visibility_timeout": visibility_timeout,
            # BRPOP the queues in the order given: llm.high before llm.default before llm.low.
            "queue_order_strategy": "priority",
            # Above kombu's 1 s BRPOP wait; a hung broker holds an API publish this long.
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
            "health_check_interval": 25,
        },
        visibility_timeout=visibility_timeout,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # At-least-once: ack after the task body, and put the message back if the worker dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Prefetched messages ignore queue priority; take one per free slot only.
        worker_prefetch_multiplier=1,
        # Results live in Postgres; Celery's backend would report unknown ids as PENDING.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_serializer="json",
        accept_content=["json"],
        # Task events cost ~20% of a worker's CPU (kombu builds a Redis client per event), so
        # they are off; Flower switches them on (enable_events) while it is watching.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=False,
        # SIGTERM: finish in-flight work for up to this long, then requeue the rest.
        worker_soft_shutdown_timeout=30.0,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )


app = make_celery()
