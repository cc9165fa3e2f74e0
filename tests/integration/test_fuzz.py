"""Fuzz the running API against its own OpenAPI schema with schemathesis, as an operator would
(`st run`): the examples, coverage and fuzzing phases, a bounded number of cases per
operation, and every check except the stateful ones (tests/integration/fuzz.toml): no 5xx;
every status code, content type, header and body as documented; a request the schema calls
invalid is refused and one it calls valid is accepted; an undeclared method is a 405 whose
`Allow` lists the path's methods. About 20 s here.

It runs on a database of its own whose only admin key is the fuzzer's (so the fuzzer can
never revoke it: the last admin key is protected), against a real API and worker process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from llmq import store
from llmq.localstack.embedded import free_port
from llmq.localstack.processes import Stack
from llmq.store.engine import get_engine

from ..helpers import wait_for

CONFIG = Path(__file__).with_name("fuzz.toml")
EXAMPLES_PER_OPERATION = 20
SEED = 1  # the same bounded run every time


def test_api_never_fails_and_always_matches_its_schema(
    isolated_env: dict[str, str], tmp_path: Path
) -> None:
    engine = get_engine(isolated_env["DATABASE_URL"])
    # No rate limits (0 = unlimited): every generated request reaches the handlers.
    key = store.create_api_key(engine, "fuzz", admin=True, requests_per_min=0, items_per_min=0)
    port = free_port()
    stack = Stack(env=isolated_env, log_dir=tmp_path / "logs")
    try:
        stack.start_api("127.0.0.1", port)
        stack.start_worker("fuzz", queues="llm.high,llm.default,llm.low", concurrency=4,
                           pool="threads", metrics_port=0)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        # /readyz answers 503 (correctly) until a worker's heartbeat is in Redis.
        wait_for(lambda: _ready(base), 60, "a live worker")
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("st")), "--config-file", str(CONFIG),
                "run", f"{base}/openapi.json",
                "-H", f"Authorization: Bearer {key}",
                "--phases", "examples,coverage,fuzzing",
                "--max-examples", str(EXAMPLES_PER_OPERATION),
                "--seed", str(SEED),
                "--workers", "1",
                "--no-color",
            ],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        stack.stop()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "API Operations:" in result.stdout and "Tested: 0" not in result.stdout


def _ready(base: str) -> Any:
    return httpx.get(f"{base}/readyz", timeout=5).status_code == 200
