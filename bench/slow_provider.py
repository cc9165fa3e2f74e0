"""Throughput and worker memory at a realistic provider latency (issue 20): where a real
deployment sits, not at the 100 ms of bench/pools.py.

    .venv/bin/python bench/slow_provider.py [--quick] [--latency-ms 3000]
                                            [--concurrency 100,500,1000] [--rounds 2]

One `llmq worker` process per run, for each pool (threads, gevent) and each concurrency, against
the fake provider (its own process) answering every call after --latency-ms. Each run is a batch
of concurrency x --rounds jobs (cache off), so every slot makes --rounds calls; the bound is
concurrency / latency jobs/s. The clock starts at the batch's publish and stops at the last
job's finished_at. Memory is the worker's peak RSS (the kernel's high-water mark). A one-job
warm-up first, so every run finds the provider's learned view in place (the first call to an
unknown link is a lone probe, llmq/resilience/adaptive.py). Prints a table; writes
bench/results/slow_provider.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import bench_services, fake_provider, write_results
from bench.pools import run_llmq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="concurrency 100 and 500, 1 round")
    parser.add_argument("--latency-ms", type=float, default=3000)
    parser.add_argument("--concurrency", default="100,500,1000")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pools", default="threads,gevent")
    args = parser.parse_args()
    if args.quick:
        args.concurrency, args.rounds = "100,500", 1
    levels = [int(c) for c in args.concurrency.split(",")]
    pools = args.pools.split(",")
    latency_s = args.latency_ms / 1000
    rows: list[dict[str, Any]] = []
    with fake_provider(args.latency_ms) as fake, bench_services("slow", fake) as bench:
        run_llmq(bench.env, bench.log_dir, pool="threads", processes=1, concurrency=1, jobs=1)
        for pool in pools:
            for concurrency in levels:
                print(f"running {pool} x {concurrency} ...", flush=True)
                # Every slot may hold a connection at once (docs/operations.md); Postgres here
                # allows 300, so the pool is capped and slots queue for a connection.
                env = bench.env | {"LLMQ_DB_POOL_SIZE": str(min(concurrency + 5, 150))}
                jobs = concurrency * args.rounds
                try:
                    outcome = run_llmq(env, bench.log_dir, pool=pool, processes=1,
                                       concurrency=concurrency, jobs=jobs)  # fmt: skip
                except Exception as exc:
                    print(f"  failed: {exc}", file=sys.stderr, flush=True)
                    rows.append({"pool": pool, "concurrency": concurrency, "error": str(exc)})
                    continue
                rate = outcome["jobs"] / outcome["seconds"]
                (memory,) = outcome["memory"].values()
                rows.append({
                    "pool": pool, "concurrency": concurrency, "jobs": jobs,
                    "succeeded": outcome["succeeded"], "seconds": round(outcome["seconds"], 2),
                    "jobs_per_s": round(rate, 1),
                    "bound_jobs_per_s": round(concurrency / latency_s, 1),
                    "of_bound": round(rate / (concurrency / latency_s), 3),
                    "worker_rss_mib": memory["peak_rss_tree_mib"],
                    "worker_cpu_ms_per_job": round(1000 * outcome["worker_cpu_s"] / jobs, 2),
                })  # fmt: skip
    print(f"\nprovider latency {latency_s:g} s, one worker process per run")
    print(f"{'pool':8s} {'concurrency':>11s} {'jobs':>6s} {'jobs/s':>7s} {'bound':>7s} "
          f"{'of bound':>8s} {'RSS MiB':>8s} {'CPU ms/job':>10s}")  # fmt: skip
    for row in rows:
        if "error" in row:
            print(f"{row['pool']:8s} {row['concurrency']:>11d}  failed: {row['error']}")
            continue
        print(f"{row['pool']:8s} {row['concurrency']:>11d} {row['jobs']:>6d} "
              f"{row['jobs_per_s']:>7.1f} {row['bound_jobs_per_s']:>7.1f} "
              f"{row['of_bound']:>8.3f} {row['worker_rss_mib']:>8.1f} "
              f"{row['worker_cpu_ms_per_job']:>10.2f}")  # fmt: skip
    write_results("slow_provider", {"args": vars(args), "runs": rows})


if __name__ == "__main__":
    main()
