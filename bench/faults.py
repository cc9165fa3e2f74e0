"""Reliability cost: throughput with 20% of provider calls answered 500 and 5% answered 429
(with Retry-After), against none, in one run (issue 7, item 7).

    .venv/bin/python bench/faults.py [--jobs 3000] [--latency-ms 100] [--retry-after 1]
                                     [--max-attempts 3] [--processes CORES] [--concurrency 100]

The same batch size runs twice on fresh workers of the recommended set-up (one `llmq worker
--pool threads` per core, LLMQ_WORKER_CONCURRENCY threads, default retry policy): first with a
clean fake provider, then with its script set to fail calls at random (seeded): 500 with
probability 0.20, else 429 with probability 0.05 / 0.80, so 20% and 5% of all calls. Errors
take the same latency as answers. Every failed call is retried by llmq (jittered backoff, or
the Retry-After), up to LLMQ_RETRY_MAX_ATTEMPTS calls per chain link (3); a job whose calls all
fail ends `failed` (all_providers_failed), expected for 0.25^3 = 1.6% of jobs with this chain
of one link. Batches are submitted as bench/pools.py does (store.insert_batch +
llmq.dispatch_batch). The clock runs from the fan-out's publish to the last finished_at.
Prints a table and writes bench/results/faults.json and faults.png.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (
    FakeProvider,
    bar_chart,
    bench_services,
    bench_tenant,
    dispatch_batch,
    fake_provider,
    insert_jobs,
    llmq_workers,
    status_counts,
    wait_batch,
    write_results,
)
from llmq.settings import Settings
from llmq.store.engine import get_engine
from llmq.testing.fake_provider import FakeScript, FaultRule

TIMEOUT = 900.0
P_500, P_429 = 0.20, 0.05


def fault_script(latency_ms: float, retry_after: float) -> FakeScript:
    return FakeScript(
        latency_ms=latency_ms,  # a new script replaces the latency too
        seed=7,
        rules=[
            FaultRule(fault="status", status=500, probability=P_500),
            # Tried only when the 500 rule did not fire: scaled so 5% of all calls get it.
            FaultRule(
                fault="status",
                status=429,
                retry_after=retry_after,
                probability=P_429 / (1 - P_500),
            ),
        ],
    )


def attempt_stats(engine: Engine, batch_id: Any) -> dict[str, Any]:
    """Provider calls per job (from the attempts table) and what they returned."""
    per_job = (
        "SELECT n, count(*) FROM (SELECT j.id, count(a.id) AS n FROM jobs j "
        "LEFT JOIN attempts a ON a.job_id = j.id WHERE j.batch_id = :b GROUP BY j.id) t "
        "GROUP BY n ORDER BY n"
    )
    outcomes = (
        "SELECT a.outcome, coalesce(a.http_status, 0), count(*) FROM attempts a "
        "JOIN jobs j ON j.id = a.job_id WHERE j.batch_id = :b GROUP BY 1, 2 ORDER BY 3 DESC"
    )
    errors = (
        "SELECT coalesce(error_code, '-'), count(*) FROM jobs WHERE batch_id = :b "
        "AND status <> 'succeeded' GROUP BY 1"
    )
    with engine.connect() as conn:
        histogram = {int(n): int(c) for n, c in conn.execute(text(per_job), {"b": batch_id})}
        by_outcome = {
            f"{outcome} {status}" if status else str(outcome): int(c)
            for outcome, status, c in conn.execute(text(outcomes), {"b": batch_id})
        }
        failures = {str(code): int(c) for code, c in conn.execute(text(errors), {"b": batch_id})}
    jobs = sum(histogram.values())
    calls = sum(n * c for n, c in histogram.items())
    return {
        "attempts_per_job": round(calls / jobs, 3) if jobs else None,
        "jobs_by_attempts": histogram,
        "attempts_by_outcome": by_outcome,
        "unsucceeded_by_error": failures,
    }


def run(
    env: dict[str, str],
    log_dir: Path,
    fake: FakeProvider,
    script: FakeScript,
    name: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    fake.set_script(script)
    httpx.post(f"{fake.url}/_fake/reset", timeout=10).raise_for_status()
    engine = get_engine(env["DATABASE_URL"])
    tenant = bench_tenant(engine, f"bench-faults-{name}")
    batch_id = insert_jobs(engine, tenant, args.jobs, label=f"{name}-")
    worker_env = env | {"LLMQ_RETRY_MAX_ATTEMPTS": str(args.max_attempts)}
    with llmq_workers(
        worker_env,
        log_dir,
        f"faults-{name}",
        processes=args.processes,
        concurrency=args.concurrency,
    ) as stack:
        start = dispatch_batch(env["REDIS_URL"], batch_id)
        end = wait_batch(engine, batch_id, args.jobs, TIMEOUT, stack.check_alive)
    seconds = end - start
    counts = status_counts(engine, batch_id)
    provider = httpx.get(f"{fake.url}/_fake/stats", timeout=10).json()
    return {
        "setup": name,
        "seconds": round(seconds, 2),
        "jobs_per_s": round(args.jobs / seconds, 1),
        "succeeded_per_s": round(counts.get("succeeded", 0) / seconds, 1),
        "status_counts": counts,
        "provider_responses": provider["by_status"],
    } | attempt_stats(engine, batch_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--retry-after", type=float, default=1.0, help="seconds, on the 429s")
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=Settings().retry_max_attempts,
        help="LLMQ_RETRY_MAX_ATTEMPTS for the workers (calls per chain link)",
    )
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--concurrency", type=int, default=Settings().worker_concurrency)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with fake_provider(args.latency_ms) as fake, bench_services("faults", fake) as bench:
        for name, script in (
            ("no faults", FakeScript(latency_ms=args.latency_ms)),
            ("20% 500 + 5% 429", fault_script(args.latency_ms, args.retry_after)),
        ):
            print(f"running {name} ...", flush=True)
            rows.append(run(bench.env, bench.log_dir, fake, script, name, args))

    clean, faulty = rows
    ratio = faulty["jobs_per_s"] / clean["jobs_per_s"]
    goodput_ratio = faulty["succeeded_per_s"] / clean["succeeded_per_s"]
    print(
        f"\n{args.jobs} jobs at {args.latency_ms:g} ms, {args.processes}x{args.concurrency} "
        f"threads, 429s with Retry-After {args.retry_after:g} s"
    )
    print(
        f"{'provider':18s} {'s':>7s} {'jobs/s':>7s} {'ok/s':>7s} {'succeeded':>9s} "
        f"{'calls/job':>9s}  provider answers; jobs by calls; not succeeded"
    )
    for r in rows:
        succeeded = r["status_counts"].get("succeeded", 0)
        print(
            f"{r['setup']:18s} {r['seconds']:7.2f} {r['jobs_per_s']:7.1f} "
            f"{r['succeeded_per_s']:7.1f} {succeeded:9d} {r['attempts_per_job']:9.3f}  "
            f"{r['provider_responses']}; {r['jobs_by_attempts']}; "
            f"{r['unsucceeded_by_error'] or 'none'}"
        )
    expected = (P_500 + P_429) ** args.max_attempts
    print(
        f"\nwith faults / without: {ratio:.2f} (jobs finished per s), {goodput_ratio:.2f} "
        f"(jobs succeeded per s)\nexpected share of jobs that fail every call: "
        f"{P_500 + P_429:.2f}^{args.max_attempts} = {expected:.3f} "
        f"(about {expected * args.jobs:.0f} of {args.jobs}); measured "
        f"{args.jobs - faulty['status_counts'].get('succeeded', 0)}"
    )
    write_results(
        "faults",
        {
            "command": " ".join(["bench/faults.py", *sys.argv[1:]]),
            "jobs": args.jobs,
            "latency_ms": args.latency_ms,
            "processes": args.processes,
            "concurrency_per_process": args.concurrency,
            "faults": {"p_500": P_500, "p_429": P_429, "retry_after_s": args.retry_after},
            "retry_max_attempts": args.max_attempts,
            "with_over_without_jobs_per_s": round(ratio, 3),
            "with_over_without_succeeded_per_s": round(goodput_ratio, 3),
            "expected_failed_share": round(expected, 4),
            "results": rows,
        },
    )
    bar_chart(
        "faults",
        [r["setup"] for r in rows],
        [r["succeeded_per_s"] for r in rows],
        title=f"{args.jobs} jobs at {args.latency_ms:g} ms: succeeded jobs/s, "
        f"with faults = {goodput_ratio:.2f}x without",
        ylabel="succeeded jobs/s (end to end)",
    )


if __name__ == "__main__":
    main()
