"""Which Celery pool should llmq workers use? Jobs/s end to end at a fixed provider latency.

    .venv/bin/python bench/pools.py [--jobs 2000] [--latency-ms 100] [--concurrency 100]

Runs, in one go on the same embedded PostgreSQL + Redis and fake provider (a separate process):
  raw-celery/threads  a task that only sleeps the latency (the engine's ceiling)
  llmq/threads 1xC    the real pipeline (claim, guardrails, cache, SDK call, attempts, finish)
  llmq/threads 2xC/2  the same concurrency split over two worker processes (one per core)
  llmq/gevent         with --gevent (needs `pip install gevent`)
  llmq/prefork-c2     the tutorial set-up: prefork pool, concurrency = cores
Prints a table and writes bench/results/pools.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (
    ROOT,
    bar_chart,
    bench_services,
    count_jobs,
    fake_provider,
    wait_until,
    wait_workers,
    write_results,
)
from llmq import repository
from llmq.db.engine import get_engine
from llmq.stack import Stack

DOC = (
    "The port authority approved a new container terminal on Tuesday. It will cost 240 "
    "million euros and add 1,200 jobs. Construction begins next spring. Environmental groups "
    "asked for a review of dredging plans; the authority agreed to publish one in June."
)


def run_llmq(
    env: dict[str, str],
    log_dir: Path,
    pool: str,
    concurrency: int,
    jobs: int,
    timeout: float,
    processes: int = 1,
) -> float:
    engine = get_engine(env["DATABASE_URL"])
    key = repository.create_api_key(engine, f"bench-{pool}-{processes}x{concurrency}")
    principal = repository.authenticate(engine, key)
    assert principal is not None
    stack = Stack(env=env, log_dir=log_dir)
    for index in range(processes):
        stack.start_worker(
            f"bench-{pool}-{index}",
            queues="llm.high,llm.default,llm.low",
            concurrency=concurrency,
            pool=pool,
        )
    try:
        wait_workers(env["REDIS_URL"], processes)  # the clock starts once all consume
        batch_id = repository.insert_batch(
            engine,
            tenant_id=principal.tenant_id,
            template="summarize",
            template_version=1,
            priority="default",
            chain=["openai:gpt-4o-mini"],
            meta={},
            items=[
                repository.NewJob(input=f"{DOC} ({i})", params={"no_cache": True})
                for i in range(jobs)
            ],
        )
        from workers.celery_app import make_celery
        from workers.dispatch import DISPATCH_BATCH

        start = time.perf_counter()
        make_celery(env["REDIS_URL"]).send_task(
            DISPATCH_BATCH, args=[str(batch_id)], queue="llm.default"
        )

        def done() -> bool:
            stack.check_alive()
            return count_jobs(engine, batch_id, "succeeded") >= jobs

        wait_until(done, timeout)
        return jobs / (time.perf_counter() - start)
    finally:
        stack.stop()


def run_raw(
    env: dict[str, str],
    log_dir: Path,
    concurrency: int,
    jobs: int,
    latency_s: float,
    timeout: float,
) -> float:
    client = redis.Redis.from_url(env["REDIS_URL"])
    client.delete("raw:done")
    log = open(log_dir / "raw.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.raw_celery",
            "worker",
            "-P",
            "threads",
            "-c",
            str(concurrency),
            "-Q",
            "raw",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "WARNING",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=log,
        stderr=log,
    )
    try:
        from bench.raw_celery import app as raw_app

        wait_workers(env["REDIS_URL"], 1, raw_app)
        start = time.perf_counter()
        with raw_app.producer_or_acquire() as producer:
            for _ in range(jobs):
                raw_app.send_task("raw.sleep", args=[latency_s], queue="raw", producer=producer)
        wait_until(lambda: int(client.get("raw:done") or 0) >= jobs, timeout)
        return jobs / (time.perf_counter() - start)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--gevent", action="store_true", help="also try the gevent pool")
    args = parser.parse_args()
    latency_s = args.latency_ms / 1000
    results: list[dict[str, Any]] = []
    with fake_provider(args.latency_ms) as fake, bench_services("pools", fake) as bench:
        env, log_dir = bench.env, bench.log_dir
        timeout = 600.0
        half = args.concurrency // 2
        runs: list[tuple[str, Any]] = [
            (
                f"raw-celery/threads 1x{args.concurrency}",
                lambda: run_raw(env, log_dir, args.concurrency, args.jobs, latency_s, timeout),
            ),
            (
                f"llmq/threads 1x{args.concurrency}",
                lambda: run_llmq(env, log_dir, "threads", args.concurrency, args.jobs, timeout),
            ),
            (
                f"llmq/threads 2x{half}",
                lambda: run_llmq(env, log_dir, "threads", half, args.jobs, timeout, 2),
            ),
        ]
        if args.gevent:
            runs.append(
                (
                    f"llmq/gevent 1x{args.concurrency}",
                    lambda: run_llmq(env, log_dir, "gevent", args.concurrency, args.jobs, 180),
                )
            )
        tutorial_jobs = max(40, args.jobs // 20)
        runs.append(
            (
                "llmq/prefork-c2 (tutorial)",
                lambda: run_llmq(env, log_dir, "prefork", 2, tutorial_jobs, timeout),
            )
        )
        for name, run in runs:
            try:
                rate = run()
            except Exception as exc:
                print(f"{name}: failed: {exc}", file=sys.stderr)
                results.append({"setup": name, "jobs_per_s": None, "error": str(exc)})
                continue
            results.append({"setup": name, "jobs_per_s": round(rate, 1)})
            print(f"{name:30s} {rate:8.1f} jobs/s", flush=True)
    raw = next((r["jobs_per_s"] for r in results if r["setup"].startswith("raw")), None)
    bound = args.concurrency / latency_s
    print(f"\ntheoretical bound concurrency/latency = {bound:.0f} jobs/s")
    for r in results:
        if raw and r["jobs_per_s"]:
            r["vs_raw_celery"] = round(r["jobs_per_s"] / raw, 3)
            print(f"{r['setup']:30s} {r['vs_raw_celery']:.2f} x raw Celery")
    write_results(
        "pools",
        {
            "jobs": args.jobs,
            "latency_ms": args.latency_ms,
            "concurrency": args.concurrency,
            "theoretical_bound_jobs_per_s": bound,
            "results": results,
        },
    )
    measured = [r for r in results if r["jobs_per_s"]]
    bar_chart(
        "pools",
        [r["setup"] for r in measured],
        [r["jobs_per_s"] for r in measured],
        title=f"{args.jobs} jobs at {args.latency_ms:g} ms provider latency",
        ylabel="jobs/s (end to end)",
    )


if __name__ == "__main__":
    main()
