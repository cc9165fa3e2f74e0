"""Ingest: time to accept a batch, and time until every one of its messages is on the queue.

    .venv/bin/python bench/ingest.py [--items 10000 50000] [--repeat 3]

The real API process (uvicorn, as `llmq api` runs it) on embedded PostgreSQL and Redis.
  accepted  POST /v1/batches with N items -> HTTP 202; every row is checked committed.
  on queue  the API publishes one dispatch message; a worker fans it out into N job messages
            (llmq/workers/dispatch.py, llmq/tasks/jobs.py: claim 1,000 unpublished rows, publish
            them, repeat). Measured from the POST until the llm.* Redis lists hold N messages.
The dispatch message travels on the batch's priority queue, the same list its job messages
go to, so a worker consuming that queue would start eating job messages while we count them.
The bench therefore moves that one message (RPOPLPUSH, one Redis round trip, counted in the
time) to a list only the dispatcher consumes: a real Celery worker process of the llmq app
(same tasks, signals, reconciler), with no job worker anywhere. Baseline in the same run: a
trivial authenticated request (GET of an unknown job -> 404). Writes bench/results/ingest.json
and ingest.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (
    BenchServices,
    bar_chart,
    bench_services,
    celery_worker_command,
    count_jobs,
    spawn,
    wait_until,
    wait_workers,
    write_results,
)
from llmq import store
from llmq.localstack.embedded import free_port
from llmq.localstack.processes import Stack
from llmq.settings import QUEUES
from llmq.workers.dispatch import DISPATCH_BATCH
from llmq.workers.queues import PRIORITY_STEPS, SEP, queue_depths
from llmq.workers.reconciler import BROKER_EPOCH_KEY

DOC = (
    "The regional water board approved a new reservoir. It will store 40 million cubic "
    "metres and cost 310 million euros. Farmers asked for a share of the new capacity."
)
DISPATCH_ONLY = "bench.dispatch"  # a list no job message is ever published to
TARGET_ITEMS, TARGET_S = 10_000, 1.0


def start_dispatcher(bench: BenchServices) -> subprocess.Popen[bytes]:
    """A Celery worker of the llmq app that consumes only DISPATCH_ONLY. `llmq worker` accepts
    only the llm.* queues, so this runs the same app through Celery's own command line."""
    return spawn(
        celery_worker_command(
            "llmq.workers.celery_app:app", "dispatcher", "threads", 4, DISPATCH_ONLY
        ),
        bench.env,
        bench.log_dir / "dispatcher.log",
    )


def hand_to_dispatcher(client: redis.Redis, queue: str = "llm.default") -> None:
    """Move the batch's dispatch message (the only message on `queue`) to the dispatcher."""
    raw = client.rpoplpush(queue, DISPATCH_ONLY)
    assert raw is not None, f"no dispatch message on {queue}"
    task = json.loads(raw)["headers"]["task"]
    assert task == DISPATCH_BATCH, f"expected the dispatch message, found {task}"


def clear_batch(client: redis.Redis, engine: Any, batch_id: str) -> None:
    """Drop the batch's messages and end its jobs, so the next run starts from empty queues
    and the reconciler never re-publishes them."""
    client.delete(*[q if s == 0 else f"{q}{SEP}{s}" for q in QUEUES for s in PRIORITY_STEPS])
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE batch_id = :b"),
            {"b": batch_id},
        )


def one_run(
    http: httpx.Client,
    client: redis.Redis,
    engine: Any,
    dispatcher: subprocess.Popen[bytes],
    body: str,
    n: int,
) -> dict[str, float]:
    start = time.perf_counter()
    response = http.post("/v1/batches", content=body, headers={"content-type": "application/json"})
    accepted = time.perf_counter() - start
    assert response.status_code == 202, response.text[:300]
    batch_id = response.json()["id"]
    hand_to_dispatcher(client)
    assert count_jobs(engine, batch_id) == n  # durable: committed before the 202

    def all_queued() -> bool:
        assert dispatcher.poll() is None, "the dispatcher exited: see its log"
        return sum(queue_depths(client).values()) >= n

    wait_until(all_queued, timeout=300, interval=0.01)
    queued = time.perf_counter() - start
    depth = sum(queue_depths(client).values())
    assert depth == n, f"{depth} messages for {n} jobs"  # each job published exactly once
    clear_batch(client, engine, batch_id)
    return {"accepted_s": accepted, "queued_s": queued}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with bench_services("ingest") as bench:
        engine = bench.engine
        client = redis.Redis.from_url(bench.env["REDIS_URL"])
        # Unlimited: the benchmark measures ingest, not the per-key rate limit.
        key = store.create_api_key(engine, "ingest", requests_per_min=0, items_per_min=0)
        port = free_port()
        stack = Stack(env=bench.env, log_dir=bench.log_dir)
        dispatcher = start_dispatcher(bench)
        try:
            stack.start_api("127.0.0.1", port)
            wait_workers(bench.env["REDIS_URL"], 1)
            # The reconciler's first tick treats a fresh broker as one that lost its data and
            # unmarks every live job; let it happen before any batch exists.
            wait_until(lambda: bool(client.exists(BROKER_EPOCH_KEY)), timeout=60)
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                timeout=300,
                headers={"Authorization": f"Bearer {key}"},
            ) as http:
                baseline = []
                for _ in range(50):
                    start = time.perf_counter()
                    http.get("/v1/jobs/00000000-0000-0000-0000-000000000000")
                    baseline.append(time.perf_counter() - start)
                base_ms = statistics.median(baseline) * 1000
                print(f"baseline: authenticated GET (404), median of 50: {base_ms:.1f} ms\n")
                print(
                    f"{'items':>7} {'MB':>5} {'accepted ms':>12} {'items/s':>9} "
                    f"{'x baseline':>10} {'on queue ms':>12} {'msgs/s':>8}"
                )
                for n in args.items:
                    body = json.dumps(
                        {"items": [{"custom_id": str(i), "input": f"{DOC} {i}"} for i in range(n)]}
                    )
                    runs = [
                        one_run(http, client, engine, dispatcher, body, n)
                        for _ in range(args.repeat)
                    ]
                    accepted = statistics.median(r["accepted_s"] for r in runs)
                    queued = statistics.median(r["queued_s"] for r in runs)
                    fanout = statistics.median(r["queued_s"] - r["accepted_s"] for r in runs)
                    row = {
                        "items": n,
                        "body_mb": round(len(body) / 1e6, 2),
                        "accepted_ms": round(accepted * 1000, 1),
                        "accepted_items_per_s": round(n / accepted),
                        "accepted_vs_baseline": round(accepted * 1000 / base_ms, 1),
                        "on_queue_ms": round(queued * 1000, 1),
                        "fanout_after_202_ms": round(fanout * 1000, 1),
                        "fanout_msgs_per_s": round(n / fanout),
                        "runs": [
                            {
                                "accepted_ms": round(r["accepted_s"] * 1000, 1),
                                "on_queue_ms": round(r["queued_s"] * 1000, 1),
                            }
                            for r in runs
                        ],
                    }
                    results.append(row)
                    print(
                        f"{n:>7} {row['body_mb']:>5} {row['accepted_ms']:>12,.1f} "
                        f"{row['accepted_items_per_s']:>9,} {row['accepted_vs_baseline']:>10,.0f} "
                        f"{row['on_queue_ms']:>12,.1f} {row['fanout_msgs_per_s']:>8,}",
                        flush=True,
                    )
        finally:
            dispatcher.terminate()
            dispatcher.wait(timeout=60)
            stack.stop()
    target = next((r for r in results if r["items"] == TARGET_ITEMS), None)
    met = None if target is None else target["accepted_ms"] / 1000 < TARGET_S
    if target is not None:
        print(
            f"\ntarget: {TARGET_ITEMS:,} items accepted in < {TARGET_S:g} s: "
            f"{'met' if met else 'NOT met'} ({target['accepted_ms'] / 1000:.2f} s)"
        )
    print(f"medians of {args.repeat} runs; 'on queue' counts from the POST")
    write_results(
        "ingest",
        {
            "repeat": args.repeat,
            "baseline_get_404_ms": round(base_ms, 2),
            "target": {"items": TARGET_ITEMS, "accept_under_s": TARGET_S, "met": met},
            "results": results,
        },
    )
    labels, values = [], []
    for r in results:
        labels += [f"{r['items']:,} accepted (202)", f"{r['items']:,} all on queue"]
        values += [r["accepted_ms"], r["on_queue_ms"]]
    bar_chart(
        "ingest",
        labels,
        values,
        title=f"POST /v1/batches: accepted and fanned out (medians of {args.repeat}); "
        f"trivial request {base_ms:.1f} ms",
        ylabel="ms from the POST",
    )


if __name__ == "__main__":
    main()
