"""A worker that consumes several queues drains llm.high before llm.default before llm.low."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from llmq import store
from llmq.localstack.processes import Stack
from llmq.store.engine import get_engine

from ..helpers import wait_for


def test_high_priority_jobs_run_first(isolated_env: dict[str, str], services: Any) -> None:
    from llmq.workers.celery_app import make_celery
    from llmq.workers.dispatch import RUN_JOB

    engine = get_engine(isolated_env["DATABASE_URL"])
    tenant_key = store.create_api_key(engine, "prio")
    principal = store.authenticate(engine, tenant_key)
    assert principal is not None

    def add(priority: str, n: int) -> list[str]:
        return [
            str(
                store.insert_job(
                    engine,
                    tenant_id=principal.tenant_id,
                    template="summarize",
                    template_version=1,
                    priority=priority,
                    chain=["local:extractive"],
                    item=store.NewJob(input=f"A {priority} priority document number {i}."),
                )
            )
            for i in range(n)
        ]

    # Enqueue low first, then default, then high: arrival order is the opposite of priority.
    order = [("low", add("low", 15)), ("default", add("default", 5)), ("high", add("high", 5))]
    celery = make_celery(isolated_env["REDIS_URL"])
    for priority, ids in order:
        for job_id in ids:
            celery.send_task(RUN_JOB, args=[job_id], queue=f"llm.{priority}")

    stack = Stack(env=isolated_env, log_dir=services.data_dir / "logs-prio")
    stack.start_worker("prio", queues="llm.high,llm.default,llm.low", concurrency=1, pool="threads")
    try:

        def finished() -> list[str] | None:
            with engine.connect() as conn:
                rows = (
                    conn.execute(
                        text(
                            "SELECT priority FROM jobs WHERE status = 'succeeded' "
                            "ORDER BY started_at"
                        )
                    )
                    .scalars()
                    .all()
                )
            return list(rows) if len(rows) == 25 else None

        started = wait_for(finished, 90, "all 25 jobs")
    finally:
        stack.stop()
    assert started == ["high"] * 5 + ["default"] * 5 + ["low"] * 15
