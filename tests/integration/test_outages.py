"""The API when a dependency is down: Redis down at submit still accepts (the job is durable and
the reconciler publishes it later), and a hung Redis costs seconds, not a minute; Postgres down
answers 503 with Retry-After, never a 500."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llmq.localstack.embedded import free_port
from llmq.localstack.processes import Stack
from llmq.settings import Settings

from ..helpers import auth, wait_for


def test_submit_with_redis_down_is_accepted_and_runs_later(
    stack_env: dict[str, str], worker: Any, new_key: Any, tmp_path: Path
) -> None:
    import httpx

    key = new_key()
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    port = free_port()
    api = Stack(env={**stack_env, "REDIS_URL": dead_redis}, log_dir=tmp_path)
    api.start_api("127.0.0.1", port)
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers=auth(key), timeout=30
        ) as client:
            started = time.monotonic()
            accepted = client.post(
                "/v1/jobs",
                json={
                    "input": "The bridge reopened after repairs. Traffic is normal again.",
                    "chain": ["local:extractive"],
                },
            )
            assert accepted.status_code == 202
            # The broker is refused quickly and only retried briefly: the request stays fast.
            assert time.monotonic() - started < 5
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.headers["retry-after"] == "5"
            assert ready.json()["checks"]["redis"].startswith("down")
            job_id = accepted.json()["id"]

            # The shared worker's reconciler (live Redis, same database) publishes it.
            def done() -> dict[str, Any] | None:
                job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
                return job if job["status"] == "succeeded" else None

            job = wait_for(done, 60, "the unpublished job to run")
            assert job["provider"] == "local"
    finally:
        api.stop()


@pytest.fixture()
def hung_redis() -> Iterator[str]:
    """A Redis URL whose server accepts connections and never answers (a frozen or partitioned
    Redis): every call waits out its whole timeout, unlike a refused connection."""
    server = socket.create_server(("127.0.0.1", 0), backlog=512)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(server.accept()[0])  # kept open, never read

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()


def test_submit_with_redis_hung_answers_in_seconds_and_runs_later(
    stack_env: dict[str, str], worker: Any, new_key: Any, tmp_path: Path, hung_redis: str
) -> None:
    # Before bounded timeouts and outage memos, each POST here took 40 s: 5 s per rate-limit
    # call (two), 30 s for the publish.
    import httpx

    key = new_key()
    port = free_port()
    api = Stack(env={**stack_env, "REDIS_URL": hung_redis}, log_dir=tmp_path)
    api.start_api("127.0.0.1", port)
    body = {"input": "The ferry resumed service. Timetables are unchanged.",
            "chain": ["local:extractive"]}  # fmt: skip
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers=auth(key), timeout=120
        ) as client:
            started = time.monotonic()
            first = client.post("/v1/jobs", json=body)
            first_s = time.monotonic() - started
            started = time.monotonic()
            second = client.post("/v1/jobs", json=body)
            second_s = time.monotonic() - started
            assert (first.status_code, second.status_code) == (202, 202)
            # The limiter gives up after its 1 s timeout, the publish after 5 s; right after,
            # the broker is not asked again. (Bounds with room for a slow machine.)
            assert first_s < 15, first_s
            assert second_s < 4, second_s

            # The shared worker's reconciler (live Redis, same database) publishes both.
            def done(job_id: str) -> bool:
                return bool(client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded")

            for job in (first.json(), second.json()):
                wait_for(lambda j=job["id"]: done(j), 60, "the unpublished job to run")
    finally:
        api.stop()


def test_postgres_down_gives_503_with_retry_after(stack_env: dict[str, str]) -> None:
    from llmq.api.app import create_app

    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/llmq"
    app = create_app(Settings(database_url=dead, redis_url=stack_env["REDIS_URL"]))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/v1/jobs", json={"input": "hello"}, headers=auth("llmq_some-key"))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert response.json()["error"]["code"] == "database_unavailable"
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
