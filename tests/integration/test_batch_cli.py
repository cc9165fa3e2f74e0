"""The batch commands as a user runs them against a live API: `status --watch` follows the
event stream with counts, rate and ETA; `results --status failed -o`; `retry`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmq.localstack.embedded import free_port
from llmq.localstack.processes import Stack
from llmq.testing.fake_provider import FakeProviderServer, FakeScript, FaultRule

from .test_cli import _llmq


def test_watch_results_filter_and_retry_from_the_cli(
    stack_env: dict[str, str], worker: Any, fake_provider: FakeProviderServer, tmp_path: Path
) -> None:
    fake_provider.set_script(FakeScript(rules=[
        FaultRule(model="cli-batch", fault="status", status=400, first_n=1),
        FaultRule(model="cli-batch", fault="latency", latency_ms=2500),
    ]))  # fmt: skip
    key = _llmq("keys", "create", "--tenant", "cli-batch", env=stack_env).stdout.split()[-1]
    port = free_port()
    stack = Stack(env=stack_env, log_dir=tmp_path / "logs")
    stack.start_api("127.0.0.1", port)
    try:
        env = {**stack_env, "LLMQ_API_URL": f"http://127.0.0.1:{port}", "LLMQ_API_KEY": key}
        docs = tmp_path / "docs.jsonl"
        docs.write_text("".join(json.dumps({"custom_id": f"c{i}", "input": f"Note {i}. It hailed."})
                                + "\n" for i in range(5)))  # fmt: skip
        submitted = _llmq("submit", str(docs), "--chain", "openai:cli-batch", env=env)
        assert submitted.returncode == 0, submitted.stderr
        batch_id = submitted.stdout.strip()

        watched = _llmq("status", batch_id, "--watch", env=env)
        assert watched.returncode == 0, watched.stderr
        assert f"{batch_id} completed 5/5" in watched.stdout
        progress = [line for line in watched.stderr.splitlines() if line.startswith("progress:")]
        assert progress and "5/5 done" in progress[-1]
        assert "/s eta" in progress[-1] and "failed 1" in progress[-1]
        # Live lines (if the batch was still running when the watch began) only move forward.
        done = [int(line.split()[1].split("/")[0]) for line in progress]
        assert done == sorted(done)

        out = tmp_path / "failed.jsonl"
        failed = _llmq("results", batch_id, "--status", "failed", "-o", str(out), env=env)
        assert failed.returncode == 0, failed.stderr
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 1 and rows[0]["status"] == "failed"

        retried = _llmq("retry", batch_id, env=env)
        assert retried.returncode == 0 and "retrying 1 item(s)" in retried.stdout
        again = _llmq("status", batch_id, "--watch", env=env)
        assert f"{batch_id} completed 5/5 succeeded=5" in again.stdout
    finally:
        stack.stop()
        fake_provider.set_script(FakeScript())
