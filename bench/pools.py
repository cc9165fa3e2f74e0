"""Throughput end to end, against the engine's ceiling and the tutorial set-up (issue 7, items 2
and 5), with the peak memory of every worker process.

    .venv/bin/python bench/pools.py [--jobs 10000] [--latency-ms 100]
                                    [--processes CORES] [--concurrency 100] [--gevent]

In one run, on the same embedded PostgreSQL + Redis and fake provider (its own process):
  raw Celery         the same pool, processes and concurrency as llmq; the task only sleeps the
                     provider latency and counts itself in Redis: the engine's ceiling
  llmq (recommended) docs/operations.md: one `llmq worker --pool threads` process per core,
                     LLMQ_WORKER_CONCURRENCY (100) threads each; the whole pipeline (claim,
                     guardrails, cache, SDK call over HTTP, attempt row, finish)
  llmq prefork       llmq's pipeline on Celery's default pool, concurrency = cores
  tutorial           what a user writes first (bench/tutorial_celery.py): Celery defaults
                     (prefork, concurrency = cores), the OpenAI SDK called inline, the answer
                     INSERTed into Postgres
  tutorial threads   the same task on llmq's pool, processes and concurrency: the floor of any
                     Celery set-up that calls the SDK and keeps the answer (nothing else: no
                     retries, no attempt records, early acks)
Submission is the API's path without the HTTP hop: the batch's rows in one transaction
(repository.insert_batch), then the fan-out task (llmq.dispatch_batch) publishes one message per
job. The clock starts at that publish and stops at the last job's finished_at in Postgres.
The prefork rows are capped at cores/latency jobs/s, so they run a twentieth of the batch (at
least 100 jobs): the rate is the same and the run stays within minutes.
Prints a table and writes bench/results/pools.json and pools.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (
    DOC,
    MemoryWatch,
    bar_chart,
    bench_services,
    bench_tenant,
    celery_worker_command,
    cpu_seconds,
    dispatch_batch,
    fake_provider,
    insert_jobs,
    llmq_workers,
    spawn,
    status_counts,
    stop_processes,
    wait_batch,
    wait_until,
    wait_workers,
    write_results,
)
from llmq.settings import Settings
from llmq.store.engine import get_engine

TIMEOUT = 900.0


def run_llmq(
    env: dict[str, str],
    log_dir: Path,
    *,
    pool: str,
    processes: int,
    concurrency: int,
    jobs: int,
) -> dict[str, Any]:
    engine = get_engine(env["DATABASE_URL"])
    tenant = bench_tenant(engine, f"bench-{pool}-{processes}x{concurrency}")
    batch_id = insert_jobs(engine, tenant, jobs, label=f"{pool}-")
    name = f"bench-{pool}"
    with llmq_workers(
        env, log_dir, name, processes=processes, concurrency=concurrency, pool=pool
    ) as stack:
        roots = {child.name: child.proc.pid for child in stack.children}
        with MemoryWatch(roots) as memory:
            cpu = cpu_seconds(list(roots.values()))
            start = dispatch_batch(env["REDIS_URL"], batch_id)
            end = wait_batch(engine, batch_id, jobs, TIMEOUT, stack.check_alive)
            cpu = cpu_seconds(list(roots.values())) - cpu
    counts = status_counts(engine, batch_id)
    return {
        "jobs": jobs,
        "seconds": end - start,
        "succeeded": counts.get("succeeded", 0),
        "worker_cpu_s": cpu,
        "memory": memory.report(),
    }


@dataclass
class CeleryRun:
    """What `run_celery_app` measured: the clock from the first send, worker CPU and memory."""

    start: float
    end: float
    cpu_s: float
    memory: dict[str, Any]


def run_celery_app(
    env: dict[str, str],
    log_dir: Path,
    app: Any,
    *,
    module: str,
    pool: str,
    processes: int,
    concurrency: int,
    send: Callable[[Any], None],
    finished: Callable[[], bool],
    poll_s: float,
) -> CeleryRun:
    """`processes` workers of a bench Celery app (`module`, consuming the queue named after its
    last part); `send(producer)` publishes the work and the clock stops once `finished()`."""
    name = module.rpartition(".")[2].removesuffix("_celery")
    procs = [
        spawn(
            celery_worker_command(module, f"{name}-{i}", pool, concurrency, name),
            env,
            log_dir / f"{name}-{pool}-{i}.log",
        )
        for i in range(processes)
    ]
    pids = [p.pid for p in procs]
    try:
        wait_workers(env["REDIS_URL"], processes, app)
        with MemoryWatch({f"{name}-{i}": pid for i, pid in enumerate(pids)}) as memory:
            cpu = cpu_seconds(pids)
            start = time.time()
            with app.producer_or_acquire() as producer:
                send(producer)
            wait_until(finished, TIMEOUT, poll_s)
            end = time.time()
            cpu = cpu_seconds(pids) - cpu
    finally:
        stop_processes(procs)
    return CeleryRun(start, end, cpu, memory.report())


def run_raw(
    env: dict[str, str],
    log_dir: Path,
    *,
    processes: int,
    concurrency: int,
    jobs: int,
    latency_s: float,
) -> dict[str, Any]:
    from bench.raw_celery import app as raw_app

    client = redis.Redis.from_url(env["REDIS_URL"])
    client.delete("raw:done")

    def send(producer: Any) -> None:
        for _ in range(jobs):
            raw_app.send_task("raw.sleep", args=[latency_s], queue="raw", producer=producer)

    run = run_celery_app(
        env, log_dir, raw_app, module="bench.raw_celery", pool="threads", processes=processes,
        concurrency=concurrency, send=send,
        finished=lambda: int(client.get("raw:done") or 0) >= jobs, poll_s=0.02,
    )  # fmt: skip
    return {
        "jobs": jobs,
        "seconds": run.end - run.start,
        "succeeded": jobs,
        "worker_cpu_s": run.cpu_s,
        "memory": run.memory,
    }


def run_tutorial(
    env: dict[str, str], log_dir: Path, *, pool: str, processes: int, concurrency: int, jobs: int
) -> dict[str, Any]:
    from bench.tutorial_celery import app as tutorial_app

    engine = get_engine(env["DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS tutorial_results"))
        conn.execute(
            text(
                "CREATE TABLE tutorial_results (item int, output text, "
                "finished_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )
        )

    def send(producer: Any) -> None:
        for i in range(jobs):
            tutorial_app.send_task(
                "tutorial.summarize",
                args=[i, f"{DOC} (tutorial-{i})"],
                queue="tutorial",
                producer=producer,
            )

    def finished() -> bool:
        with engine.connect() as conn:
            count = conn.execute(text("SELECT count(*) FROM tutorial_results")).scalar_one()
        return int(count) >= jobs

    run = run_celery_app(
        env, log_dir, tutorial_app, module="bench.tutorial_celery", pool=pool,
        processes=processes, concurrency=concurrency, send=send, finished=finished, poll_s=0.25,
    )  # fmt: skip
    with engine.connect() as conn:  # the last answer stored, not the last poll
        end = float(
            conn.execute(
                text("SELECT extract(epoch FROM max(finished_at)) FROM tutorial_results")
            ).scalar_one()
        )
    return {
        "jobs": jobs,
        "seconds": end - run.start,
        "succeeded": jobs,
        "worker_cpu_s": run.cpu_s,
        "memory": run.memory,
    }


def main() -> None:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument(
        "--processes",
        type=int,
        default=cores,
        help="worker processes (one per core: docs/operations.md)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=Settings().worker_concurrency,
        help="threads per worker process (default LLMQ_WORKER_CONCURRENCY)",
    )
    parser.add_argument("--gevent", action="store_true", help="also try the gevent pool")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with fake_provider(args.latency_ms) as fake, bench_services("pools", fake) as bench:
        for key, label, run in plan(args, bench.env, bench.log_dir):
            print(f"running {label} ...", flush=True)
            try:
                outcome = run()
            except Exception as exc:
                print(f"  failed: {exc}", file=sys.stderr, flush=True)
                results.append({"key": key, "setup": label, "jobs_per_s": None, "error": str(exc)})
                continue
            rate = outcome["jobs"] / outcome["seconds"]
            cpu_ms = 1000 * outcome["worker_cpu_s"] / outcome["jobs"]
            results.append(
                {"key": key, "setup": label, "jobs_per_s": round(rate, 1)}
                | {k: outcome[k] for k in ("jobs", "succeeded", "memory")}
                | {"seconds": round(outcome["seconds"], 2)}
                | {"worker_cpu_ms_per_job": round(cpu_ms, 2)}
            )
    report(args, results)


def plan(
    args: argparse.Namespace, env: dict[str, str], log_dir: Path
) -> list[tuple[str, str, Callable[[], dict[str, Any]]]]:
    """(key, label, run) for each set-up, in the order they run."""
    cores = os.cpu_count() or 1
    latency_s = args.latency_ms / 1000
    layout = f"{args.processes}x{args.concurrency}"
    small = prefork_jobs(args.jobs)

    def llmq(pool: str, processes: int, concurrency: int, jobs: int) -> Callable[[], Any]:
        return lambda: run_llmq(
            env, log_dir, pool=pool, processes=processes, concurrency=concurrency, jobs=jobs
        )

    runs: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
        (
            "raw",
            f"raw Celery, threads {layout}, task = sleep",
            lambda: run_raw(
                env,
                log_dir,
                processes=args.processes,
                concurrency=args.concurrency,
                jobs=args.jobs,
                latency_s=latency_s,
            ),
        ),
        (
            "llmq",
            f"llmq, threads {layout} (recommended)",
            llmq("threads", args.processes, args.concurrency, args.jobs),
        ),
    ]
    if args.gevent:
        runs.append(
            (
                "llmq-gevent",
                f"llmq, gevent {layout}",
                llmq("gevent", args.processes, args.concurrency, args.jobs),
            )
        )
    runs += [
        ("llmq-prefork", f"llmq, prefork c{cores}", llmq("prefork", 1, cores, small)),
        (
            "tutorial",
            f"tutorial: Celery prefork c{cores}, SDK inline",
            lambda: run_tutorial(
                env, log_dir, pool="prefork", processes=1, concurrency=cores, jobs=small
            ),
        ),
        (
            "tutorial-threads",
            f"tutorial task on threads {layout} (SDK + INSERT only)",
            lambda: run_tutorial(
                env,
                log_dir,
                pool="threads",
                processes=args.processes,
                concurrency=args.concurrency,
                jobs=args.jobs,
            ),
        ),
    ]
    return runs


def prefork_jobs(jobs: int) -> int:
    return max(100, jobs // 20)


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    latency_s = args.latency_ms / 1000
    bound = args.processes * args.concurrency / latency_s
    by_key = {r["key"]: r["jobs_per_s"] for r in results}
    ratios: dict[str, float | None] = {
        "llmq_vs_raw_celery": _ratio(by_key.get("llmq"), by_key.get("raw")),
        "llmq_vs_tutorial": _ratio(by_key.get("llmq"), by_key.get("tutorial")),
        "llmq_vs_tutorial_threads": _ratio(by_key.get("llmq"), by_key.get("tutorial-threads")),
        "llmq_vs_bound": _ratio(by_key.get("llmq"), bound),
    }
    print_table(results, bound, ratios, args)
    write_results(
        "pools",
        {
            "command": " ".join(["bench/pools.py", *sys.argv[1:]]),
            "jobs": args.jobs,
            "prefork_jobs": prefork_jobs(args.jobs),
            "latency_ms": args.latency_ms,
            "processes": args.processes,
            "concurrency_per_process": args.concurrency,
            "theoretical_bound_jobs_per_s": bound,
            "ratios": ratios,
            "targets": {"llmq_vs_raw_celery": ">= 0.6", "llmq_vs_tutorial": "> 20"},
            "results": results,
        },
    )
    measured = [r for r in results if r["jobs_per_s"]]
    bar_chart(
        "pools",
        [r["setup"] for r in measured],
        [r["jobs_per_s"] for r in measured],
        title=f"{args.jobs} jobs at {args.latency_ms:g} ms provider latency "
        f"(bound {bound:.0f} jobs/s)",
        ylabel="jobs/s (end to end)",
    )


def _ratio(ours: float | None, base: float | None) -> float | None:
    return round(ours / base, 3) if ours and base else None


def print_table(
    results: list[dict[str, Any]],
    bound: float,
    ratios: dict[str, float | None],
    args: argparse.Namespace,
) -> None:
    print(f"\n{args.jobs} jobs at {args.latency_ms:g} ms (prefork rows: {prefork_jobs(args.jobs)})")
    print(
        f"{'setup':52s} {'jobs':>6s} {'s':>7s} {'jobs/s':>8s} {'ok':>6s} "
        f"{'CPU ms/job':>10s} {'RSS/proc MiB':>12s} {'RSS sum MiB':>11s}"
    )
    for r in results:
        if r["jobs_per_s"] is None:
            print(f"{r['setup']:52s} failed: {r['error'][:60]}")
            continue
        memory = r["memory"].values()
        per_proc = max(m["peak_rss_process_mib"] for m in memory)
        tree = sum(m["peak_rss_tree_mib"] for m in memory)
        print(
            f"{r['setup']:52s} {r['jobs']:6d} {r['seconds']:7.2f} {r['jobs_per_s']:8.1f} "
            f"{r['succeeded']:6d} {r['worker_cpu_ms_per_job']:10.2f} {per_proc:12.1f} {tree:11.1f}"
        )
    print(f"\ntheoretical bound = processes x concurrency / latency = {bound:.0f} jobs/s")

    def show(value: float | None, suffix: str = "") -> str:
        return "n/a" if value is None else f"{value:.2f}{suffix}"

    print(f"llmq / raw Celery = {show(ratios['llmq_vs_raw_celery'])}   (target >= 0.6)")
    print(f"llmq / tutorial   = {show(ratios['llmq_vs_tutorial'], 'x')}   (target > 20x)")
    print(f"llmq / tutorial task on threads = {show(ratios['llmq_vs_tutorial_threads'])}")
    print(f"llmq / bound      = {show(ratios['llmq_vs_bound'])}")


if __name__ == "__main__":
    main()
