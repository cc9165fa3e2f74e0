"""`llmq demo`: summarize the shipped sample documents on a throwaway embedded stack.

Everything is real: PostgreSQL and Redis from their wheels, the HTTP API, a Celery worker
process, the provider chain. With no API keys set, the OpenAI and Anthropic links are skipped
(recorded as `not_configured`) and the offline extractive summarizer answers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from llmq import store
from llmq.cli.progress import follow_batch
from llmq.client import Client
from llmq.localstack.processes import Stack
from llmq.localstack.services import services
from llmq.settings import QUEUES, get_settings
from llmq.store.engine import dispose_all, get_engine
from llmq.store.migrate import upgrade


def sample_documents() -> list[tuple[str, str]]:
    """(name, text) of every shipped sample, in file order."""
    folder = resources.files("llmq").joinpath("samples")
    docs = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".txt"):
            docs.append((entry.name.removesuffix(".txt"), entry.read_text(encoding="utf-8")))
    return docs


def _route(route: list[dict[str, Any]]) -> str:
    return " -> ".join(
        f"{step['link']} {step.get('skipped') or step.get('result')}" for step in route
    )


def run_demo(*, workers: int = 1, concurrency: int = 16) -> int:
    settings = get_settings()
    data_dir = Path(tempfile.mkdtemp(prefix="llmq-demo-"))
    try:
        with services(settings, data_dir, durable=False) as urls:
            os.environ.update(urls)
            get_settings.cache_clear()
            return _run(urls, data_dir, workers=workers, concurrency=concurrency)
    finally:
        dispose_all()
        shutil.rmtree(data_dir, ignore_errors=True)


def _run(urls: dict[str, str], data_dir: Path, *, workers: int, concurrency: int) -> int:
    from llmq.localstack.embedded import free_port

    upgrade(urls["DATABASE_URL"])
    key = store.create_api_key(get_engine(urls["DATABASE_URL"]), "demo")
    docs = sample_documents()
    stack = Stack(env=urls, log_dir=data_dir / "logs")
    try:
        port = free_port()
        stack.start_api("127.0.0.1", port)
        for index in range(workers):
            stack.start_worker(
                f"demo{index + 1}", queues=",".join(QUEUES), concurrency=concurrency, pool="threads"
            )
        with Client(f"http://127.0.0.1:{port}", key) as client:
            accepted = client.submit_batch(
                [{"custom_id": name, "input": text} for name, text in docs],
                template="summarize",
                params={"style": "paragraph"},
            )
            print(
                f"submitted batch {accepted['id']} with {accepted['item_count']} documents",
                flush=True,
            )
            batch = follow_batch(client, accepted["id"], timeout_s=600)
            rows = list(client.results(accepted["id"]))
            details = {row["job_id"]: client.job(row["job_id"]) for row in rows}
    except Exception:
        for child in stack.children:
            print(f"--- {child.name} log ---\n{child.tail()}")
        raise
    finally:
        stack.stop()

    words = {name: len(text.split()) for name, text in docs}
    total_tokens = 0
    total_cost = Decimal(0)
    for row in rows:
        tokens = row["input_tokens"] + row["output_tokens"]
        total_tokens += tokens
        total_cost += Decimal(row["cost_usd"] or 0)
        where = f"{row['provider']}:{row['model']}" if row["provider"] else "-"
        print(
            f"\n== {row['custom_id']} ({words.get(row['custom_id'], 0)} words) "
            f"[{row['status']}] via {where}, {tokens} tokens, ${row['cost_usd']}"
        )
        job = details[row["job_id"]]
        print(f"   chain: {_route(job['route'])}")
        if job["guardrails"]:
            fired = ", ".join(f"{g['rule']} x{g['count']}" for g in job["guardrails"])
            print(f"   guardrails: {fired} (redacted before any provider saw the text)")
        body = row["result"] if row["status"] == "succeeded" else f"error: {row['error']}"
        print(
            textwrap.fill(
                body or "",
                width=100,
                initial_indent="   ",
                subsequent_indent="   ",
                replace_whitespace=False,
            )
        )
    succeeded = sum(1 for r in rows if r["status"] == "succeeded")
    failed = len(rows) - succeeded
    print(f"\nbatch {batch['id']}: {batch['status']}")
    print(
        f"demo: {len(rows)} documents, {succeeded} succeeded, {failed} failed, "
        f"{total_tokens} tokens, cost ${total_cost:.6f}"
    )
    return 0 if failed == 0 and len(rows) == len(docs) else 1
