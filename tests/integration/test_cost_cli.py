"""`llmq budgets` and `llmq usage` as a user runs them (subprocesses, a live API)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from llmq import store
from llmq.localstack.embedded import free_port
from llmq.localstack.processes import Stack

from ..helpers import auth, wait_for


def _llmq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_budgets_set_list_and_bad_input(stack_env: dict[str, str], engine: Engine) -> None:
    tenant = f"cli-budget-{uuid.uuid4().hex[:6]}"
    store.create_api_key(engine, tenant)
    done = _llmq("budgets", "set", "--tenant", tenant, "--daily", "5", "--monthly", "100",
                 env=stack_env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{tenant}: daily=$5 monthly=$100" in done.stdout
    # A limit not given keeps its value; 'none' clears one.
    assert _llmq("budgets", "set", "--tenant", tenant, "--monthly", "none",
                 env=stack_env).returncode == 0  # fmt: skip
    with engine.connect() as conn:
        tenant_id = conn.execute(
            text("SELECT id FROM tenants WHERE name = :n"), {"n": tenant}
        ).scalar_one()
    budget = store.get_budget(engine, tenant_id)
    assert budget is not None and budget.daily_usd == Decimal(5) and budget.monthly_usd is None
    assert f"{tenant}  daily=$5  monthly=none" in _llmq("budgets", "list", env=stack_env).stdout

    bad = _llmq("budgets", "set", "--tenant", tenant, "--daily", "five", env=stack_env)
    assert bad.returncode == 1 and "amount in USD" in bad.stderr
    negative = _llmq("budgets", "set", "--tenant", tenant, "--daily", "-1", env=stack_env)
    assert negative.returncode == 1
    missing = _llmq("budgets", "set", "--tenant", "no-such-tenant", "--daily", "1", env=stack_env)
    assert missing.returncode == 1 and "no tenant" in missing.stderr


def test_usage_command_shows_the_api_rollup(
    stack_env: dict[str, str], engine: Engine, worker: Any, http: Any, tmp_path: Path
) -> None:
    key = store.create_api_key(engine, f"cli-usage-{uuid.uuid4().hex[:6]}")
    job = http.post(
        "/v1/jobs",
        json={"input": "The ferry runs hourly. The terminal opens in May.",
              "chain": ["openai:gpt-4o-mini"], "params": {"no_cache": True}},
        headers=auth(key),
    )  # fmt: skip
    assert job.status_code == 202
    job_id = job.json()["id"]
    wait_for(
        lambda: http.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()["status"] == "succeeded",
        what="the job",
    )
    expected = http.get("/v1/usage", headers=auth(key)).json()["total"]["cost_usd"]

    port = free_port()
    stack = Stack(env=stack_env, log_dir=tmp_path / "logs")
    stack.start_api("127.0.0.1", port)
    try:
        env = {**stack_env, "LLMQ_API_URL": f"http://127.0.0.1:{port}", "LLMQ_API_KEY": key}
        table = _llmq("usage", "--group-by", "model", env=env)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert any(line.startswith("openai:gpt-4o-mini") and expected in line for line in lines)
        assert any(line.startswith("TOTAL") and expected in line for line in lines)
        raw = _llmq("usage", "--group-by", "day", "--json", env=env)
        assert json.loads(raw.stdout)["total"]["cost_usd"] == expected
        bad = _llmq("usage", "--group-by", "planet", env=env)
        assert bad.returncode == 1 and "HTTP 422" in bad.stderr
    finally:
        stack.stop()
