"""Priority: how long a `llm.high` job takes while `llm.low` is saturated (issue 7, item 6).

    .venv/bin/python bench/priority.py [--low-jobs 4000] [--probes 10] [--latency-ms 100]
                                       [--processes CORES] [--concurrency 100]

Workers are the recommended set-up (one `llmq worker --pool threads` per core, all three queues,
LLMQ_WORKER_CONCURRENCY threads). In one run:
  1. idle: `--probes` high-priority jobs, one after another, on the idle workers (baseline);
  2. a big low-priority batch is published (insert_batch + llmq.dispatch_batch on llm.low);
     once its fan-out has put all of it on llm.low (a low job submitted then waits behind the
     whole backlog) and the workers have finished a first wave of it, with a backlog larger
     than all their slots left, the same number of high-priority jobs are submitted one after
     another, and with the first of them one more low-priority job (what the high job would
     wait for if the queues were served first come, first served).
A probe is submitted as POST /v1/jobs does, without the HTTP hop: store.insert_job, then
one message on its priority's queue. Its time is from just before the insert to its finished_at
in Postgres; the queue wait is to its started_at. Workers take llm.high first because each
free slot fetches one message (prefetch 1) and polls the queues in priority order.
Prints a table and writes bench/results/priority.json and priority.png.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (
    DOC,
    FAKE_CHAIN,
    FINAL,
    bar_chart,
    bench_services,
    bench_tenant,
    dispatch_batch,
    fake_provider,
    insert_jobs,
    llmq_workers,
    status_counts,
    wait_batch,
    wait_until,
    write_results,
)
from llmq import store
from llmq.settings import PRIORITY_TO_QUEUE, Settings
from llmq.store.engine import get_engine
from llmq.workers.queues import queue_depths

TIMEOUT = 600.0


class Submitter:
    """Single jobs, inserted and published the way the API does."""

    def __init__(self, env: dict[str, str], tenant_id: Any) -> None:
        from llmq.workers.celery_app import make_celery

        self.engine = get_engine(env["DATABASE_URL"])
        self.celery = make_celery(env["REDIS_URL"])
        self.tenant_id = tenant_id
        self.count = 0

    def submit(self, priority: str) -> tuple[str, float]:
        """(job id, epoch time just before the insert)."""
        from llmq.workers.dispatch import RUN_JOB

        self.count += 1
        submitted = time.time()
        job_id = str(
            store.insert_job(
                self.engine,
                tenant_id=self.tenant_id,
                template="summarize",
                template_version=1,
                priority=priority,
                chain=list(FAKE_CHAIN),
                item=store.NewJob(
                    input=f"{DOC} (probe {priority} {self.count})", params={"no_cache": True}
                ),
            )
        )
        self.celery.send_task(RUN_JOB, args=[job_id], queue=PRIORITY_TO_QUEUE[priority])
        return job_id, submitted

    def timings(self, job_id: str, submitted: float) -> dict[str, Any]:
        """Seconds from submission to started_at and finished_at (None until it finished)."""
        sql = (
            "SELECT status, extract(epoch FROM started_at), extract(epoch FROM finished_at) "
            "FROM jobs WHERE id = :id"
        )
        with self.engine.connect() as conn:
            status, started, finished = conn.execute(text(sql), {"id": job_id}).one()
        if status not in FINAL:
            return {"status": status}
        return {
            "status": status,
            "queue_wait_s": round(float(started) - submitted, 4),
            "total_s": round(float(finished) - submitted, 4),
        }

    def run_one(self, priority: str) -> dict[str, Any]:
        job_id, submitted = self.submit(priority)
        wait_until(lambda: self.timings(job_id, submitted)["status"] in FINAL, 60, 0.02)
        return self.timings(job_id, submitted)


def undispatched(engine: Engine, batch_id: Any) -> int:
    # Only waiting jobs: a job that finished may carry no mark (the reconciler's first tick on
    # a fresh broker forgets every mark, and the job ran from its first message anyway).
    sql = (
        "SELECT count(*) FROM jobs WHERE batch_id = :b AND dispatched_at IS NULL "
        "AND status = 'queued'"
    )
    with engine.connect() as conn:
        return int(conn.execute(text(sql), {"b": batch_id}).scalar_one())


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    totals = [r["total_s"] for r in rows if "total_s" in r]
    waits = [r["queue_wait_s"] for r in rows if "queue_wait_s" in r]
    return {
        "n": len(totals),
        "median_s": round(statistics.median(totals), 4) if totals else None,
        "max_s": round(max(totals), 4) if totals else None,
        "median_queue_wait_s": round(statistics.median(waits), 4) if waits else None,
        "all_succeeded": all(r["status"] == "succeeded" for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--low-jobs", type=int, default=4000)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--concurrency", type=int, default=Settings().worker_concurrency)
    args = parser.parse_args()
    slots = args.processes * args.concurrency

    with fake_provider(args.latency_ms) as fake, bench_services("priority", fake) as bench:
        env = bench.env
        engine = get_engine(env["DATABASE_URL"])
        tenant = bench_tenant(engine, "bench-priority")
        low_batch = insert_jobs(engine, tenant, args.low_jobs, priority="low", label="low-")
        submitter = Submitter(env, tenant)
        broker = redis.Redis.from_url(env["REDIS_URL"])
        with llmq_workers(
            env,
            bench.log_dir,
            "prio",
            processes=args.processes,
            concurrency=args.concurrency,
        ) as stack:
            print("idle: high-priority probes ...", flush=True)
            submitter.run_one("high")  # untimed: the first job of a worker pays one-off costs
            idle = [submitter.run_one("high") for _ in range(args.probes)]

            print(f"saturating llm.low with {args.low_jobs} jobs ...", flush=True)
            started = dispatch_batch(env["REDIS_URL"], low_batch, "low")

            fanned_out: list[float] = []

            def saturated() -> bool:
                # The whole batch is on llm.low, so a low job submitted now queues behind all
                # of it: the fan-out has published every message once the jobs still queued in
                # Postgres are those in the list plus at most one reserved per worker slot.
                # And the workers have been at it for a while (a wave done), with more waiting
                # than they can take at once.
                stack.check_alive()
                counts = status_counts(engine, low_batch)
                depth = queue_depths(broker)["llm.low"]
                published = undispatched(engine, low_batch) == 0 and (
                    counts.get("queued", 0) - depth <= slots
                )
                if published and not fanned_out:
                    fanned_out.append(time.time() - started)
                return published and counts.get("succeeded", 0) >= slots and depth >= slots

            wait_until(saturated, TIMEOUT, 0.1)
            print("saturated: high-priority probes ...", flush=True)
            busy: list[dict[str, Any]] = []
            control: tuple[str, float] | None = None
            for index in range(args.probes):
                depth = queue_depths(broker)["llm.low"]
                running = status_counts(engine, low_batch).get("running", 0)
                if index == 0:
                    control = submitter.submit("low")
                row = submitter.run_one("high") | {
                    "llm_low_depth_at_submit": depth,
                    "low_jobs_running_at_submit": running,
                }
                row["llm_low_depth_at_finish"] = queue_depths(broker)["llm.low"]
                busy.append(row)
                print(f"  probe {index + 1}: {row}", flush=True)
            end = wait_batch(engine, low_batch, args.low_jobs, TIMEOUT, stack.check_alive)
            assert control is not None
            wait_until(lambda: submitter.timings(*control)["status"] in FINAL, TIMEOUT, 0.1)
            low_probe = submitter.timings(*control)
            low_counts = status_counts(engine, low_batch)

    idle_s, busy_s = summary(idle), summary(busy)
    saturated_all = all(r["llm_low_depth_at_finish"] > 0 for r in busy)
    ratio = busy_s["median_s"] / idle_s["median_s"] if idle_s["median_s"] else None
    low_rate = args.low_jobs / (end - started)
    print(
        f"\n{args.processes}x{args.concurrency} threads, {args.latency_ms:g} ms provider "
        f"latency, llm.low: {args.low_jobs} jobs at {low_rate:.0f} jobs/s "
        f"({low_counts.get('succeeded', 0)} succeeded); its fan-out (llmq.dispatch_batch, "
        f"in a busy worker) had published every message after {fanned_out[0]:.1f} s"
    )
    print(f"{'job':52s} {'n':>3s} {'median s':>9s} {'max s':>7s} {'queue wait':>10s}")
    rows = [
        ("llm.high, idle workers (baseline)", idle_s),
        ("llm.high, llm.low saturated", busy_s),
    ]
    for label, s in rows:
        print(
            f"{label:52s} {s['n']:3d} {s['median_s']:9.3f} {s['max_s']:7.3f} "
            f"{s['median_queue_wait_s']:10.3f}"
        )
    print(
        f"{'llm.low, submitted with the first saturated probe':52s} {1:3d} "
        f"{low_probe['total_s']:9.3f} {low_probe['total_s']:7.3f} "
        f"{low_probe['queue_wait_s']:10.3f}"
    )
    print(f"\nsaturated / idle (median) = {ratio:.2f}x")
    print(
        "llm.low kept a backlog until every saturated probe finished: "
        + ("yes" if saturated_all else "NO (raise --low-jobs)")
    )
    write_results(
        "priority",
        {
            "command": " ".join(["bench/priority.py", *sys.argv[1:]]),
            "latency_ms": args.latency_ms,
            "processes": args.processes,
            "concurrency_per_process": args.concurrency,
            "low_jobs": args.low_jobs,
            "low_jobs_per_s": round(low_rate, 1),
            "low_status_counts": low_counts,
            "low_fan_out_s": round(fanned_out[0], 2),
            "high_idle": idle_s | {"probes": idle},
            "high_saturated": busy_s | {"probes": busy},
            "low_submitted_mid_run": low_probe,
            "saturated_over_idle": None if ratio is None else round(ratio, 3),
            "llm_low_backlog_throughout": saturated_all,
        },
    )
    bar_chart(
        "priority",
        ["llm.high, idle", "llm.high, llm.low saturated", "llm.low, same moment"],
        [idle_s["median_s"], busy_s["median_s"], low_probe["total_s"]],
        title=f"Submit -> finished, {args.latency_ms:g} ms provider latency, "
        f"{args.processes}x{args.concurrency} threads",
        ylabel="seconds, log scale (median of probes)",
        log=True,
        fmt="%.3g",
    )


if __name__ == "__main__":
    main()
