"""Overhead per job at low load: what llmq adds around the provider call, and the queue wait.

    .venv/bin/python bench/overhead.py [--jobs 200] [--rate 5] [--latency-ms 100]

One API process and one worker process (threads pool, concurrency 100: the recommended set-up)
on embedded PostgreSQL and Redis; the fake provider answers after a fixed latency. Jobs are
submitted one at a time through POST /v1/jobs at `--rate` per second, so they never wait for a
free slot. Per job, from its row and its attempts' rows:
  run overhead  (finished_at - started_at) - the sum of its attempts' latency_ms: claim,
                guardrails, rate limiter, circuit, budget, attempt and result writes, output
                review. The attempt's latency_ms is the SDK call (request building, HTTP,
                parsing); its excess over the fixed latency is shown apart.
  queue wait    submit (the client's clock just before the POST) -> started_at (the claim):
                the HTTP request (insert, publish), Redis, Celery's delivery, the task start.
Same machine, one clock. Baseline in the same run: bare Celery's queue wait (send -> task
start) for a task that only sleeps the latency, same Redis, pool, concurrency and rate, after
the llmq processes have stopped. Warm-up jobs (first SDK client, first connections) are not
counted. Writes bench/results/overhead.json and overhead.png.
"""

from __future__ import annotations

import argparse
import json
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
    fake_provider,
    spawn,
    stop_processes,
    summarize,
    wait_until,
    wait_workers,
    write_results,
)
from llmq import store
from llmq.localstack.embedded import free_port
from llmq.localstack.processes import Stack

DOC = (
    "The university opened a new library wing. It holds 200,000 books and 400 study places; "
    "students asked for longer opening hours during exams, which the board will discuss."
)
SUBMIT = {"chain": ["openai:gpt-4o-mini"], "params": {"no_cache": True}}


def paced(count: int, rate: float, send: Any) -> list[Any]:
    """Call `send(i)` `count` times, starting one every 1/rate s (a schedule, not a sleep
    after each call, so a slow call does not lower the rate)."""
    start, out = time.perf_counter(), []
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        out.append(send(i))
    return out


def job_timings(bench: BenchServices, sent: dict[str, float]) -> list[dict[str, float]]:
    with bench.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT j.id::text, extract(epoch FROM j.created_at)::float8, "
                "extract(epoch FROM j.started_at)::float8, "
                "extract(epoch FROM j.finished_at)::float8, "
                "sum(a.latency_ms)::float8, count(a.id) "
                "FROM jobs j JOIN attempts a ON a.job_id = j.id "
                "WHERE j.id = ANY(CAST(:ids AS uuid[])) GROUP BY j.id"
            ),
            {"ids": list(sent)},
        ).all()
    return [
        {
            "sent": sent[job_id],
            "created": created,
            "started": started,
            "finished": finished,
            "provider_ms": provider_ms,
            "attempts": attempts,
        }
        for job_id, created, started, finished, provider_ms, attempts in rows
    ]


def run_llmq(bench: BenchServices, args: argparse.Namespace) -> list[dict[str, float]]:
    key = store.create_api_key(bench.engine, "overhead", requests_per_min=0, items_per_min=0)
    port = free_port()
    stack = Stack(env=bench.env, log_dir=bench.log_dir)
    try:
        stack.start_api("127.0.0.1", port)
        stack.start_worker(
            "overhead",
            queues="llm.high,llm.default,llm.low",
            concurrency=args.concurrency,
            pool="threads",
        )
        wait_workers(bench.env["REDIS_URL"], 1)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            timeout=30,
            headers={"Authorization": f"Bearer {key}"},
        ) as http:

            def submit(i: int) -> tuple[str, float]:
                sent = time.time()
                response = http.post("/v1/jobs", json=SUBMIT | {"input": f"{DOC} ({i})"})
                assert response.status_code == 202, response.text[:300]
                return response.json()["id"], sent

            def finish(sent: dict[str, float]) -> None:
                def done() -> bool:
                    stack.check_alive()
                    with bench.engine.connect() as conn:
                        statuses = conn.execute(
                            text(
                                "SELECT status, count(*) FROM jobs "
                                "WHERE id = ANY(CAST(:ids AS uuid[])) GROUP BY status"
                            ),
                            {"ids": list(sent)},
                        ).all()
                    by_status: dict[str, int] = {s: n for s, n in statuses}
                    unexpected = set(by_status) - {"queued", "running", "succeeded"}
                    assert not unexpected, f"jobs ended {by_status}"
                    return by_status.get("succeeded", 0) == len(sent)

                wait_until(done, timeout=120, interval=0.2)

            finish(dict(paced(args.warmup, args.rate, submit)))
            sent = dict(paced(args.jobs, args.rate, submit))
            finish(sent)
        return job_timings(bench, sent)
    finally:
        stack.stop()


def run_raw(bench: BenchServices, args: argparse.Namespace) -> list[list[float]]:
    """[sent, started, finished] per bare Celery task, sent at the same rate."""
    client = redis.Redis.from_url(bench.env["REDIS_URL"])
    proc = spawn(
        celery_worker_command(
            "bench.raw_timing", "raw-timing", "threads", args.concurrency, "raw.timing"
        ),
        bench.env,
        bench.log_dir / "raw_timing.log",
    )
    try:
        from bench.raw_timing import TIMINGS
        from bench.raw_timing import app as raw_app

        wait_workers(bench.env["REDIS_URL"], 1, raw_app)
        latency_s = args.latency_ms / 1000

        def send(_: int) -> None:
            raw_app.send_task("raw.timed_sleep", args=[time.time(), latency_s], queue="raw.timing")

        total = args.warmup + args.jobs
        paced(total, args.rate, send)
        wait_until(lambda: client.llen(TIMINGS) >= total, timeout=120)
        timings = [json.loads(item) for item in client.lrange(TIMINGS, 0, -1)]
        return sorted(timings)[args.warmup :]
    finally:
        stop_processes([proc])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rate", type=float, default=5, help="jobs submitted per second")
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    with fake_provider(args.latency_ms) as fake, bench_services("overhead", fake) as bench:
        jobs = run_llmq(bench, args)
        raw = run_raw(bench, args)
    retried = sum(1 for j in jobs if j["attempts"] > 1)
    metrics = {
        "run overhead": summarize(
            [(j["finished"] - j["started"]) * 1000 - j["provider_ms"] for j in jobs]
        ),
        "queue wait (submit -> started)": summarize(
            [(j["started"] - j["sent"]) * 1000 for j in jobs]
        ),
        "  of which after the INSERT (created -> started)": summarize(
            [(j["started"] - j["created"]) * 1000 for j in jobs]
        ),
        "provider call (attempt latency_ms)": summarize([j["provider_ms"] for j in jobs]),
        "  of which beyond the fixed latency (SDK, HTTP)": summarize(
            [j["provider_ms"] - args.latency_ms for j in jobs]
        ),
        "end to end (submit -> finished)": summarize(
            [(j["finished"] - j["sent"]) * 1000 for j in jobs]
        ),
        "bare Celery queue wait (send -> start)": summarize(
            [(started - sent) * 1000 for sent, started, _ in raw]
        ),
    }
    print(
        f"{len(jobs)} jobs at {args.rate:g}/s, provider latency {args.latency_ms:g} ms, "
        f"1 worker process, threads x {args.concurrency}; {retried} needed a retry\n"
    )
    print(f"{'ms':50} {'p50':>8} {'p95':>8} {'p99':>8}")
    for name, m in metrics.items():
        print(f"{name:50} {m['p50']:>8.1f} {m['p95']:>8.1f} {m['p99']:>8.1f}")
    wait, base = (
        metrics["queue wait (submit -> started)"],
        metrics["bare Celery queue wait (send -> start)"],
    )
    ratios = {
        "queue_wait_p50_vs_bare_celery": round(wait["p50"] / base["p50"], 1),
        "run_overhead_p50_pct_of_provider_latency": round(
            100 * metrics["run overhead"]["p50"] / args.latency_ms, 1
        ),
        "end_to_end_p50_vs_provider_latency": round(
            metrics["end to end (submit -> finished)"]["p50"] / args.latency_ms, 2
        ),
    }
    print()
    for name, value in ratios.items():
        print(f"{name}: {value}")
    write_results(
        "overhead",
        {
            "jobs": len(jobs),
            "rate_per_s": args.rate,
            "latency_ms": args.latency_ms,
            "worker": f"1 process, threads pool, concurrency {args.concurrency}",
            "jobs_retried": retried,
            "metrics_ms": {name.strip(): m for name, m in metrics.items()},
            "ratios": ratios,
        },
    )
    shown = [
        "run overhead",
        "queue wait (submit -> started)",
        "bare Celery queue wait (send -> start)",
    ]
    bar_chart(
        "overhead",
        [f"{name.split(' (')[0]} {q}" for name in shown for q in ("p50", "p95", "p99")],
        [metrics[name][q] for name in shown for q in ("p50", "p95", "p99")],
        title=f"Per-job overhead at {args.rate:g} jobs/s, provider latency {args.latency_ms:g} ms",
        ylabel="ms",
    )


if __name__ == "__main__":
    main()
