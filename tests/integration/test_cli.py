"""The CLI as a user runs it: keys, submit/status/results against a live API, and the demo."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmq.localstack.embedded import free_port
from llmq.localstack.processes import Stack

from ..helpers import wait_for


def _llmq(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_keys_submit_status_results(stack_env: dict[str, str], worker: Any, tmp_path: Path) -> None:
    created = _llmq("keys", "create", "--tenant", "cli-user", env=stack_env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("llmq_") and len(key) > 40
    listed = _llmq("keys", "list", env=stack_env)
    assert "cli-user" in listed.stdout and key not in listed.stdout

    port = free_port()
    stack = Stack(env=stack_env, log_dir=tmp_path / "logs")
    stack.start_api("127.0.0.1", port)
    try:
        client_env = {**stack_env, "LLMQ_API_URL": f"http://127.0.0.1:{port}", "LLMQ_API_KEY": key}
        docs = tmp_path / "docs.jsonl"
        docs.write_text(
            "\n".join(
                json.dumps(
                    {
                        "custom_id": f"d{i}",
                        "input": f"Document {i}. The library reopened. Visitors returned.",
                    }
                )
                for i in range(3)
            )
            + "\n"
        )
        submitted = _llmq("submit", str(docs), "--chain", "local:extractive", env=client_env)
        assert submitted.returncode == 0, submitted.stderr
        batch_id = submitted.stdout.strip()
        status = _llmq("status", batch_id, "--wait", env=client_env)
        assert status.returncode == 0, status.stderr
        assert f"{batch_id} completed 3/3" in status.stdout
        out = tmp_path / "out.jsonl"
        results = _llmq("results", batch_id, "-o", str(out), env=client_env)
        assert results.returncode == 0, results.stderr
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["custom_id"] for r in rows] == ["d0", "d1", "d2"]
        assert all(r["status"] == "succeeded" for r in rows)

        revoked = _llmq("keys", "revoke", key[:11], env=stack_env)
        assert revoked.returncode == 0, revoked.stderr
    finally:
        stack.stop()


def test_bad_jsonl_line_is_reported_with_its_line_number(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    docs = tmp_path / "bad.jsonl"
    docs.write_text('{"input": "fine"}\n{"input": \n')
    result = _llmq("submit", str(docs), env={**stack_env, "LLMQ_API_KEY": "x"})
    assert result.returncode == 1
    assert f"{docs}:2: not valid JSON" in result.stderr


def test_demo_runs_from_nothing_twice(tmp_path: Path) -> None:
    """`make demo`'s command on the embedded default: no URLs, no keys, twice in a row."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
    }
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "llmq.cli", "demo"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        last = result.stdout.strip().splitlines()[-1]
        assert last.startswith("demo: 22 documents, 22 succeeded, 0 failed, "), last
        assert last.endswith("cost $0.000000")
        assert "openai:gpt-4o-mini not_configured" in result.stdout
        assert "pii.email x1" in result.stdout


def _without_services() -> dict[str, str]:
    """The environment with no DATABASE_URL/REDIS_URL (values of "" count as unset)."""
    return {"DATABASE_URL": "", "REDIS_URL": ""}


@pytest.mark.parametrize(
    "command",
    [
        ["status", "00000000-0000-0000-0000-000000000000"],
        ["status", "00000000-0000-0000-0000-000000000000", "--wait"],
        ["results", "00000000-0000-0000-0000-000000000000"],
        ["retry", "00000000-0000-0000-0000-000000000000"],
        ["usage"],
        ["submit", "DOCS"],
    ],
)
def test_client_commands_name_the_api_url_they_cannot_reach(
    command: list[str], tmp_path: Path
) -> None:
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"input": "one document"}\n')
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = [str(docs) if a == "DOCS" else a for a in command]
    result = _llmq(*args, env={"LLMQ_API_URL": url, "LLMQ_API_KEY": "llmq_x", "COLUMNS": "200"})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cannot reach the llmq API at {url}" in lines[0] and "LLMQ_API_URL" in lines[0]


def test_api_without_a_database_says_what_to_set(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llmq.cli", "api", "--port", str(free_port())],
        env={**os.environ, **_without_services()},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "llmq api needs DATABASE_URL (and REDIS_URL); `llmq up` runs it all on embedded servers"
    ]


def test_a_wrong_database_is_one_line_naming_it(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://llmq:secret@127.0.0.1:{free_port()}/llmq"
    result = _llmq("keys", "list", env={"DATABASE_URL": url})
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert f"cannot reach the database at {url.replace('secret', '***')}" in line
    assert "DATABASE_URL" in line and "secret" not in line


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (["api"], "LLMQ_API_PORT or 8000"),
        (["worker"], "LLMQ_WORKER_CONCURRENCY or 100"),
        (["flower"], "LLMQ_FLOWER_PORT or 5555"),
        (["up"], "LLMQ_API_PORT or 8000"),
    ],
)
def test_help_shows_the_real_defaults(command: list[str], shown: str) -> None:
    result = _llmq(*command, "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert shown in result.stdout
    assert "[default: 0]" not in result.stdout


def test_worker_takes_celerys_dash_n_and_expands_the_host_once(
    isolated_env: dict[str, str], tmp_path: Path
) -> None:
    import redis

    from llmq.workers.heartbeat import live_workers

    proc = subprocess.Popen(
        [sys.executable, "-m", "llmq.cli", "worker", "-n", "w1@%h", "--concurrency", "2",
         "--metrics-port", "0"],
        env={**os.environ, **isolated_env}, cwd=tmp_path, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis.from_url(isolated_env["REDIS_URL"])
        names = wait_for(
            lambda: [w["name"] for w in live_workers(client)], 60, "the worker's heartbeat"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert names == [f"w1@{socket.gethostname()}"]
