"""Server-Sent Events as a client reads them, over a real HTTP server: ordered events that
end with the batch or job, driven by Redis notifications, with Postgres as the fallback."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine, text

from llmq import store
from llmq.localstack.embedded import free_port
from llmq.settings import Settings
from llmq.store.engine import get_engine
from llmq.telemetry.events import ServerEvent, parse_sse
from llmq.testing.fake_provider import FakeProviderServer, FakeScript, FaultRule

from ..helpers import auth, wait_for


@contextlib.contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """The API on a real socket (TestClient buffers whole responses, SSE needs the wire)."""
    # Imported here, not at collection: importing the API binds the Celery broker, which must
    # happen after the session environment is set (see tests/conftest.py).
    from llmq.api.app import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "the API server to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _read_events(
    url: str, key: str, timeout: float, into: list[ServerEvent] | None = None
) -> list[ServerEvent]:
    """Read the stream to its end, appending each event to `into` as soon as it arrives."""
    seen = [] if into is None else into
    with (
        httpx.Client(timeout=timeout) as client,
        client.stream("GET", url, headers=auth(key)) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in parse_sse(response.iter_lines()):
            seen.append(event)
    return seen


@pytest.fixture()
def slow_model(fake_provider: FakeProviderServer) -> Iterator[str]:
    fake_provider.set_script(
        FakeScript(rules=[FaultRule(model="sse-slow", fault="latency", latency_ms=700)])
    )
    yield "openai:sse-slow"
    fake_provider.set_script(FakeScript())


def test_batch_events_arrive_in_order_on_notifications_and_end_with_the_batch(
    worker: Any, new_key: Any, slow_model: str
) -> None:
    # Snapshots every 60 s only: the stream keeps up only if the workers' notifications arrive.
    settings = Settings(events_snapshot_interval_s=60)
    key = new_key()
    with serve(settings) as base:
        items = [{"custom_id": str(i), "input": f"Text {i}. The river rose."} for i in range(4)]
        # Two rounds on one worker slot each is not guaranteed; the latency keeps it running.
        submitted = httpx.post(f"{base}/v1/batches", headers=auth(key), timeout=10,
                               json={"items": items, "chain": [slow_model]})  # fmt: skip
        assert submitted.status_code == 202
        batch_id = submitted.json()["id"]
        events = _read_events(f"{base}/v1/batches/{batch_id}/events", key, timeout=30)
        other = httpx.get(f"{base}/v1/batches/{batch_id}/events", headers=auth(new_key()))
        assert other.status_code == 404

    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
    assert [e.event for e in events][-1] == "completed"
    assert all(e.event == "progress" for e in events[:-1])
    assert events[0].data["status"] == "in_progress" and len(events) >= 2
    done = [e.data["completed"] for e in events]
    assert done == sorted(done)  # counts only move forward
    last = events[-1].data
    assert last["counts"]["succeeded"] == 4 and last["completed"] == last["item_count"] == 4
    assert last["input_tokens"] > 0


def test_job_events_fall_back_to_postgres_when_no_notification_comes(
    engine: Engine, new_key: Any
) -> None:
    """A state written without any notification (as after a lost message) still reaches the
    stream through the periodic snapshot, and the stream ends on the terminal state."""
    key = new_key()
    principal = store.authenticate(engine, key)
    assert principal is not None
    job_id = store.insert_job(
        engine, tenant_id=principal.tenant_id, template="summarize", template_version=1,
        priority="low", chain=["local:extractive"], item=store.NewJob(input="Quiet."),
    )  # fmt: skip
    # Hold it as a running job so no worker takes it while the test writes its outcome.
    with engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET status = 'running', lease_owner = 'test', "
                          "lease_expires_at = now() + interval '1 hour' WHERE id = :id"),
                     {"id": job_id})  # fmt: skip
    seen: list[ServerEvent] = []
    with serve(Settings(events_snapshot_interval_s=0.3)) as base:
        url = f"{base}/v1/jobs/{job_id}/events"
        reader = threading.Thread(target=_read_events, args=(url, key, 20, seen))
        reader.start()
        wait_for(lambda: seen, 20, "the first event")
        with engine.begin() as conn:
            conn.execute(text("UPDATE jobs SET status = 'succeeded', result = 'r', "
                              "finished_at = now() WHERE id = :id"), {"id": job_id})  # fmt: skip
        reader.join(20)
    assert [(e.event, e.data["status"]) for e in seen] == [
        ("status", "running"),
        ("done", "succeeded"),
    ]
    assert [e.id for e in seen] == ["1", "2"]


def test_batch_stream_ends_with_cancelled_when_the_batch_is_cancelled(
    isolated_env: dict[str, str],
) -> None:
    # Isolated database and no worker: the jobs wait until the cancel ends them. Snapshots are
    # a minute apart, so the end can only arrive in time through the cancel's notification.
    settings = Settings(
        database_url=isolated_env["DATABASE_URL"],
        redis_url=isolated_env["REDIS_URL"],
        events_snapshot_interval_s=60,
    )
    engine = get_engine(isolated_env["DATABASE_URL"])
    key = store.create_api_key(engine, "cancel-stream")
    principal = store.authenticate(engine, key)
    assert principal is not None
    batch_id = store.insert_batch(
        engine, tenant_id=principal.tenant_id, template="summarize", template_version=1,
        priority="default", chain=["local:extractive"], meta={},
        items=[store.NewJob(input=f"Text {i}.") for i in range(3)],
    )  # fmt: skip
    seen: list[ServerEvent] = []
    with serve(settings) as base:
        url = f"{base}/v1/batches/{batch_id}/events"
        reader = threading.Thread(target=_read_events, args=(url, key, 20, seen))
        reader.start()
        wait_for(lambda: seen, 20, "the first event")
        cancelled = httpx.post(f"{base}/v1/batches/{batch_id}/cancel", headers=auth(key))
        assert cancelled.status_code == 200, cancelled.text
        reader.join(20)
    assert [e.event for e in seen] == ["progress", "cancelled"]
    assert seen[0].data["counts"]["queued"] == 3
    assert seen[-1].data["counts"]["cancelled"] == 3 and seen[-1].data["status"] == "cancelled"
