"""The top-level api/ and workers/ folders are the frameworks' entry points into the one `llmq`
package: an ASGI server and Celery's own command line find the real app through them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_asgi_entry_point_serves_the_api(stack_env: dict[str, str]) -> None:
    from fastapi.testclient import TestClient

    sys.path.insert(0, str(ROOT))
    try:
        from api.asgi import app
    finally:
        sys.path.remove(str(ROOT))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert "/v1/jobs" in client.get("/openapi.json").json()["paths"]


def test_celery_command_line_finds_the_worker_app_and_its_tasks() -> None:
    """`celery -A workers.celery ...` (what docker-compose's flower and healthcheck run)."""
    listed = subprocess.run(
        [sys.executable, "-c", "from workers.celery import app; print(sorted(app.tasks))"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    for task in ("llmq.run_job", "llmq.dispatch_batch", "llmq.deliver_webhook"):
        assert task in listed.stdout
