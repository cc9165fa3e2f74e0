"""API latency under load: p50/p99 of POST /v1/jobs and GET /v1/jobs/{id} with 100 concurrent
clients (locust, headless, closed loop: no think time), and the API's peak memory.

    .venv/bin/python bench/api_latency.py [--users 100] [--duration 30] [--api-workers 1 [2]]

One phase per request kind, each `--duration` seconds with `--users` clients, against one API
process started as the README runs it (`llmq api`: uvicorn, 1 worker process by default; give
`--api-workers 1 2` to compare with 2 in the same run) on embedded PostgreSQL and Redis:
  GET /healthz         the baseline: the same load on a route that touches no database
  POST /v1/jobs        one document; the job is inserted and its message published
  GET /v1/jobs/{id}    a random one of --prepare jobs that had succeeded before the load
                       (so the answer carries a result and its attempt)
No worker runs during the load: on a 2-core machine a worker would take CPU from the API and
the numbers would measure the machine, not the API (in production workers run elsewhere). The
jobs submitted stay queued. The bench key has no per-key rate limits. Locust runs in its own
process on the same machine and takes CPU too; its and the API's CPU seconds are recorded.
Peak RSS is VmHWM of the API process (and of each uvicorn worker process) at the end of the run.
Writes bench/results/api_latency.json and api_latency.png.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text

from bench.harness import (
    ROOT,
    BenchServices,
    bar_chart,
    bench_services,
    count_jobs,
    fake_provider,
    process_tree,
    start_api,
    tree_cpu_s,
    tree_memory_mb,
    wait_until,
    wait_workers,
    write_results,
)
from llmq import store
from llmq.localstack.embedded import free_port
from llmq.localstack.processes import Stack

LOCUSTFILE = ROOT / "bench" / "locust_api.py"
# (locust user class, the request name it reports)
PHASES = [
    ("Healthz", "GET /healthz"),
    ("SubmitJob", "POST /v1/jobs"),
    ("GetJob", "GET /v1/jobs/{id}"),
]
DOC = "The harbour reopened after the storm. Ferries run again from Monday; repairs cost 2 m."


def prepare_finished_jobs(bench: BenchServices, key: str, count: int) -> list[str]:
    """`count` jobs run to `succeeded` by a worker that is stopped before the load starts."""
    principal = store.authenticate(bench.engine, key)
    assert principal is not None
    batch_id = store.insert_batch(
        bench.engine,
        tenant_id=principal.tenant_id,
        template="summarize",
        template_version=1,
        priority="default",
        chain=["openai:gpt-4o-mini"],
        meta={},
        items=[store.NewJob(input=f"{DOC} ({i})", params={"no_cache": True}) for i in range(count)],
    )
    from llmq.workers.celery_app import make_celery
    from llmq.workers.dispatch import DISPATCH_BATCH

    stack = Stack(env=bench.env, log_dir=bench.log_dir)
    stack.start_worker("prepare", queues="llm.default", concurrency=50, pool="threads")
    try:
        wait_workers(bench.env["REDIS_URL"], 1)
        make_celery(bench.env["REDIS_URL"]).send_task(
            DISPATCH_BATCH, args=[str(batch_id)], queue="llm.default"
        )
        wait_until(lambda: count_jobs(bench.engine, batch_id, "succeeded") >= count, 300)
    finally:
        stack.stop()
    with bench.engine.connect() as conn:
        rows = conn.execute(text("SELECT id::text FROM jobs WHERE batch_id = :b"), {"b": batch_id})
        return [row[0] for row in rows]


def run_locust(
    user_class: str, host: str, users: int, duration: int, env: dict[str, str], out: Path
) -> tuple[dict[str, str], float]:
    """One headless locust run; its stats row for the aggregated requests, and its CPU s."""
    prefix = out / user_class
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out / f"{user_class}.log", "wb") as log:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(LOCUSTFILE),
                "--headless",
                "--users",
                str(users),
                "--spawn-rate",
                str(users),
                "--run-time",
                f"{duration}s",
                "--reset-stats",  # drop the ramp-up: count only once every client is running
                "--host",
                host,
                "--csv",
                str(prefix),
                "--only-summary",
                "--loglevel",
                "ERROR",
                user_class,
            ],
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
            timeout=duration + 120,
            check=False,  # locust exits 1 when any request failed; the failures are counted below
        )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    stats = next(r for r in rows if r["Name"] == "Aggregated")
    return stats, cpu


def run_config(
    bench: BenchServices, key: str, api_workers: int, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """The three phases against one API process with `api_workers` uvicorn workers."""
    rows: list[dict[str, Any]] = []
    port = free_port()
    stack = Stack(env=bench.env, log_dir=bench.log_dir)
    try:
        api = start_api(stack, port, api_workers)
        if api_workers > 1:  # the supervisor answers once one worker is up; wait for all
            wait_until(lambda: len(process_tree(api.proc.pid)) > api_workers, 60)
        idle = tree_memory_mb(api.proc.pid, "VmRSS")
        print(
            f"\nllmq api --workers {api_workers}: RSS at rest {idle['total']} MB; "
            f"locust {args.users} users x {args.duration} s per phase"
        )
        print(
            f"{'request':22} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'fail':>5} "
            f"{'x base p50':>10} {'x base p99':>10} {'API cpu ms/req':>14} {'locust':>6}"
        )
        locust_env = {"BENCH_KEY": key, "BENCH_JOB_IDS": str(out / "job_ids.txt")}
        for user_class, name in PHASES:
            cpu_before, start = tree_cpu_s(api.proc.pid), time.perf_counter()
            stats, locust_cpu = run_locust(
                user_class, f"http://127.0.0.1:{port}", args.users, args.duration, locust_env, out
            )
            wall = time.perf_counter() - start
            stack.check_alive()
            row: dict[str, Any] = {
                "request": name,
                "requests": int(stats["Request Count"]),
                "failures": int(stats["Failure Count"]),
                "req_per_s": round(float(stats["Requests/s"]), 1),
                "p50_ms": float(stats["50%"]),
                "p95_ms": float(stats["95%"]),
                "p99_ms": float(stats["99%"]),
                "mean_ms": round(float(stats["Average Response Time"]), 1),
            }
            # CPU per request (locust's start-up and ramp-up included, so slightly high):
            # what one request costs the API, and what driving it cost the load tool.
            served = max(1, row["requests"])
            api_cpu = tree_cpu_s(api.proc.pid) - cpu_before
            row["api_cpu_ms_per_req"] = round(1000 * api_cpu / served, 2)
            row["locust_cpu_ms_per_req"] = round(1000 * locust_cpu / served, 2)
            row["api_cpu_pct_of_phase"] = round(100 * api_cpu / wall)
            base = rows[0] if rows else row
            row["p50_vs_healthz"] = round(row["p50_ms"] / base["p50_ms"], 1)
            row["p99_vs_healthz"] = round(row["p99_ms"] / base["p99_ms"], 1)
            rows.append(row)
            print(
                f"{name:22} {row['req_per_s']:>7,.0f} {row['p50_ms']:>7g} "
                f"{row['p99_ms']:>7g} {row['failures']:>5} {row['p50_vs_healthz']:>10} "
                f"{row['p99_vs_healthz']:>10} {row['api_cpu_ms_per_req']:>14} "
                f"{row['locust_cpu_ms_per_req']:>6}",
                flush=True,
            )
        peak = tree_memory_mb(api.proc.pid, "VmHWM")
    finally:
        stack.stop()
    print(f"API peak RSS (VmHWM): {peak['total']} MB over {len(peak) - 1} process(es)")
    return {
        "api_workers": api_workers,
        "api_rss_at_rest_mb": idle,
        "api_peak_rss_mb": peak,
        "results": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--duration", type=int, default=30, help="seconds per phase")
    parser.add_argument(
        "--api-workers",
        type=int,
        nargs="+",
        default=[1],
        help="uvicorn worker processes; several values run one after the other",
    )
    parser.add_argument("--prepare", type=int, default=500, help="finished jobs to GET")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="llmq-bench-locust-"))
    with fake_provider(10) as fake, bench_services("api_latency", fake) as bench:
        key = store.create_api_key(bench.engine, "api-latency", requests_per_min=0, items_per_min=0)
        ids = prepare_finished_jobs(bench, key, args.prepare)
        (out / "job_ids.txt").write_text("\n".join(ids))
        configs = [run_config(bench, key, n, args, out) for n in args.api_workers]
    write_results(
        "api_latency",
        {
            "users": args.users,
            "duration_s_per_phase": args.duration,
            "finished_jobs_for_get": len(ids),
            "note": "locust percentiles are rounded (to 1 ms below 100 ms, 10 ms below 1 s)",
            "configs": configs,
        },
    )
    bar_chart(
        "api_latency",
        [
            f"{r['request']} {q}" + (f" (w{c['api_workers']})" if len(configs) > 1 else "")
            for c in configs
            for r in c["results"]
            for q in ("p50", "p99")
        ],
        [r[f"{q}_ms"] for c in configs for r in c["results"] for q in ("p50", "p99")],
        title=f"API latency, {args.users} concurrent clients (locust), uvicorn workers: "
        + ", ".join(str(c["api_workers"]) for c in configs),
        ylabel="ms",
    )


if __name__ == "__main__":
    main()
