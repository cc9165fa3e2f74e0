"""Locust users for bench/api_latency.py (run by it; not meant to be run alone).

Each user loops with no think time (closed loop), so N users keep N requests in flight.
BENCH_KEY is the API key; BENCH_JOB_IDS a file with one finished job id per line.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from locust import FastHttpUser, constant, task

DOC = (
    "The city council voted to extend the tram line by 4 km. Work starts in March and costs "
    "85 million euros; two stations will close for six weeks during construction."
)
HEADERS = {"Authorization": f"Bearer {os.environ.get('BENCH_KEY', '')}"}
SUBMIT = json.dumps({"input": DOC, "chain": ["openai:gpt-4o-mini"], "params": {"no_cache": True}})


def _job_ids() -> list[str]:
    path = os.environ.get("BENCH_JOB_IDS")
    return Path(path).read_text().split() if path else []


class Healthz(FastHttpUser):
    """The baseline: a route that touches neither Postgres nor Redis."""

    wait_time = constant(0)

    @task
    def healthz(self) -> None:
        self.client.get("/healthz", name="GET /healthz")


class SubmitJob(FastHttpUser):
    wait_time = constant(0)

    @task
    def submit(self) -> None:
        self.client.post(
            "/v1/jobs",
            data=SUBMIT,
            headers=HEADERS | {"Content-Type": "application/json"},
            name="POST /v1/jobs",
        )


class GetJob(FastHttpUser):
    wait_time = constant(0)
    ids = _job_ids()

    @task
    def get(self) -> None:
        job_id = random.choice(self.ids)
        self.client.get(f"/v1/jobs/{job_id}", headers=HEADERS, name="GET /v1/jobs/{id}")
