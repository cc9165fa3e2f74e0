"""Scaling out: the same batch on 1, 2 and 4 worker processes at 1 s provider latency (issue 7,
item 4).

    .venv/bin/python bench/scaling.py [--jobs 480] [--concurrency 20] [--latency-ms 1000]
                                      [--processes 1,2,4]

Each process is `llmq worker --pool threads --concurrency C`; adding a process adds C slots, as
adding a worker machine would. At 1 s per call a slot finishes one job a second, so the ideal
rate is processes x C jobs/s and the speed-up over one process should be close to the number
of processes while the work stays I/O-bound. The defaults keep it there on a 2-core machine:
C = 20 gives at most 80 jobs/s with 4 processes, about half of what the pipeline's CPU cost per
job allows on 2 cores (bench/pools.py measures both), so the chart shows the engine's scaling
rather than the CPU running out. 480 jobs = 24, 12 and 6 waves of 1 s: about 24, 12 and 6 s,
long enough that the start-up ramp (about one latency) costs at most a few percent.
Batches are submitted as bench/pools.py does (store.insert_batch + llmq.dispatch_batch);
the clock runs from the fan-out's publish to the last finished_at in Postgres.
Prints a table and writes bench/results/scaling.json and scaling.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (
    bench_services,
    bench_tenant,
    cpu_seconds,
    dispatch_batch,
    fake_provider,
    finish_times,
    insert_jobs,
    line_chart,
    llmq_workers,
    status_counts,
    steady_rate,
    wait_batch,
    write_results,
)
from llmq.store.engine import get_engine

TIMEOUT = 300.0


def run(
    env: dict[str, str], log_dir: Path, processes: int, concurrency: int, jobs: int
) -> dict[str, Any]:
    engine = get_engine(env["DATABASE_URL"])
    tenant = bench_tenant(engine, f"bench-scaling-{processes}")
    warmup = insert_jobs(engine, tenant, processes * concurrency, label=f"warm{processes}-")
    batch_id = insert_jobs(engine, tenant, jobs, label=f"p{processes}-")
    with llmq_workers(
        env, log_dir, f"scale{processes}", processes=processes, concurrency=concurrency
    ) as stack:
        # One untimed wave first: every thread's first job pays one-off costs (connections,
        # SDK clients) that a long-running worker has already paid.
        dispatch_batch(env["REDIS_URL"], warmup)
        wait_batch(engine, warmup, processes * concurrency, TIMEOUT, stack.check_alive)
        pids = [child.proc.pid for child in stack.children]
        cpu = cpu_seconds(pids)
        start = dispatch_batch(env["REDIS_URL"], batch_id)
        end = wait_batch(engine, batch_id, jobs, TIMEOUT, stack.check_alive)
        cpu = cpu_seconds(pids) - cpu
    seconds = end - start
    steady = steady_rate(finish_times(engine, batch_id))
    return {
        "processes": processes,
        "slots": processes * concurrency,
        "seconds": round(seconds, 2),
        "jobs_per_s": round(jobs / seconds, 2),
        "steady_jobs_per_s": None if steady is None else round(steady, 2),
        "succeeded": status_counts(engine, batch_id).get("succeeded", 0),
        "worker_cpu_ms_per_job": round(1000 * cpu / jobs, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=480)
    parser.add_argument("--concurrency", type=int, default=20, help="threads per process")
    parser.add_argument("--latency-ms", type=float, default=1000)
    parser.add_argument("--processes", default="1,2,4", help="comma-separated process counts")
    args = parser.parse_args()
    counts = [int(p) for p in args.processes.split(",")]
    latency_s = args.latency_ms / 1000
    print(
        f"{args.jobs} jobs at {args.latency_ms:g} ms, {args.concurrency} threads per process: "
        f"ideal rate = processes x {args.concurrency} / {latency_s:g} s; the biggest set-up "
        f"needs {max(counts) * args.concurrency / latency_s:.0f} jobs/s, kept well under the "
        "CPU limit so the run measures scaling (see the module docstring).",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    with fake_provider(args.latency_ms) as fake, bench_services("scaling", fake) as bench:
        for processes in counts:
            print(f"running {processes} process(es) ...", flush=True)
            rows.append(run(bench.env, bench.log_dir, processes, args.concurrency, args.jobs))

    # Speed-ups are over the first (smallest) set-up, normally 1 process.
    base, steady_base = rows[0]["jobs_per_s"], rows[0]["steady_jobs_per_s"]
    print(
        f"\n{'processes':>9s} {'slots':>6s} {'s':>7s} {'jobs/s':>8s} {'ideal':>7s} "
        f"{'speed-up':>8s} {'efficiency':>10s} {'steady':>7s} {'speed-up':>8s} {'ok':>5s} "
        f"{'CPU ms/job':>10s}"
    )
    for row in rows:
        ideal = row["slots"] / latency_s
        steady = row["steady_jobs_per_s"]
        row["ideal_jobs_per_s"] = ideal
        row["speedup"] = round(row["jobs_per_s"] / base, 2)
        row["vs_ideal"] = round(row["jobs_per_s"] / ideal, 3)
        row["steady_speedup"] = round(steady / steady_base, 2) if steady and steady_base else None
        print(
            f"{row['processes']:9d} {row['slots']:6d} {row['seconds']:7.2f} "
            f"{row['jobs_per_s']:8.1f} {ideal:7.0f} {row['speedup']:7.2f}x "
            f"{row['vs_ideal']:10.2f} {steady or 0:7.1f} {row['steady_speedup'] or 0:7.2f}x "
            f"{row['succeeded']:5d} {row['worker_cpu_ms_per_job']:10.2f}"
        )
    print(
        f"jobs/s: end to end (publish -> last finished); steady: between the 10th and 90th "
        f"percentile finish times (no ramp, no tail). speed-up: over the {counts[0]}-process "
        "run (ideal: processes / that count); efficiency: jobs/s over the ideal rate"
    )
    write_results(
        "scaling",
        {
            "command": " ".join(["bench/scaling.py", *sys.argv[1:]]),
            "jobs": args.jobs,
            "latency_ms": args.latency_ms,
            "concurrency_per_process": args.concurrency,
            "results": rows,
        },
    )
    line_chart(
        "scaling",
        counts,
        {
            "measured speed-up (end to end)": [row["speedup"] for row in rows],
            "measured speed-up (steady)": [row["steady_speedup"] or 0 for row in rows],
            "ideal (linear)": [p / counts[0] for p in counts],
        },
        title=f"{args.jobs} jobs at {args.latency_ms:g} ms, {args.concurrency} threads/process",
        xlabel="worker processes",
        ylabel="speed-up over 1 process",
    )


if __name__ == "__main__":
    main()
