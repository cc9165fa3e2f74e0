"""The provider Batch lane against the sync lane (issue 16): cost per 1,000 summaries and the
time to finish, in one run.

    .venv/bin/python bench/batch_lane.py [--jobs 1000] [--turnaround-s 20] [--latency-ms 100]
                                         [--max-age-s 2] [--processes 1] [--concurrency 100]

Both lanes run the same N distinct summarize jobs (cache off) on fresh workers (`llmq worker
--pool threads`) against the fake provider in its own process, which answers each batch item
exactly as its sync endpoint answers the same request (same text, same token counts) and ends
an upstream batch `--turnaround-s` after its creation (real providers: minutes to 24 h, most
within an hour). Sync: the batch's fan-out is published as POST /v1/batches does; the clock
runs from the publish to the last finished_at. Lane: the jobs are inserted with
lane=provider_batch; the workers' lane thread uploads them once the oldest waited
LLMQ_BATCH_LANE_MAX_AGE_S, polls, and collects; the clock runs from the insert to the last
finished_at. Cost is the jobs' recorded cost (each attempt priced from the usage the provider
reported: sync price, or batch price for the lane). Prints a table and writes
bench/results/batch_lane.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (
    DOC,
    FAKE_CHAIN,
    bench_services,
    bench_tenant,
    dispatch_batch,
    fake_provider,
    llmq_workers,
    status_counts,
    wait_batch,
    write_results,
)
from llmq import store
from llmq.store.engine import get_engine

TIMEOUT = 900.0


def insert(engine: Engine, tenant: Any, jobs: int, lane: str) -> Any:
    return store.insert_batch(
        engine, tenant_id=tenant, template="summarize", template_version=1,
        priority="default", chain=list(FAKE_CHAIN), meta={}, lane=lane,
        items=[store.NewJob(input=f"{DOC} ({i})", params={"no_cache": True})
               for i in range(jobs)],
    )  # fmt: skip


def totals(engine: Engine, batch_id: Any) -> dict[str, Any]:
    sql = (
        "SELECT coalesce(sum(j.cost_usd), 0), coalesce(sum(j.input_tokens), 0), "
        "coalesce(sum(j.output_tokens), 0), (SELECT count(DISTINCT provider_batch_id) FROM jobs "
        "WHERE batch_id = :b) FROM jobs j WHERE j.batch_id = :b"
    )
    with engine.connect() as conn:
        cost, tokens_in, tokens_out, uploads = conn.execute(text(sql), {"b": batch_id}).one()
    return {"cost_usd": Decimal(cost), "input_tokens": int(tokens_in),
            "output_tokens": int(tokens_out), "upstream_batches": int(uploads)}  # fmt: skip


def run_lane(
    env: dict[str, str], log_dir: Path, lane: str, args: argparse.Namespace
) -> dict[str, Any]:
    engine = get_engine(env["DATABASE_URL"])
    tenant = bench_tenant(engine, f"bench-lane-{lane}")
    with llmq_workers(
        env, log_dir, f"lane-{lane}", processes=args.processes, concurrency=args.concurrency
    ) as stack:
        if lane == "sync":
            batch_id = insert(engine, tenant, args.jobs, lane)
            start = dispatch_batch(env["REDIS_URL"], batch_id)
        else:
            start = time.time()
            batch_id = insert(engine, tenant, args.jobs, lane)
        end = wait_batch(engine, batch_id, args.jobs, TIMEOUT, stack.check_alive)
    counts = status_counts(engine, batch_id)
    sums = totals(engine, batch_id)
    return {
        "lane": lane,
        "seconds": round(end - start, 2),
        "status_counts": counts,
        "cost_usd": str(sums["cost_usd"]),
        "cost_per_1000_usd": str(round(sums["cost_usd"] / args.jobs * 1000, 6)),
        "input_tokens": sums["input_tokens"],
        "output_tokens": sums["output_tokens"],
        "upstream_batches": sums["upstream_batches"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--turnaround-s", type=float, default=20.0)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--max-age-s", type=float, default=2.0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with fake_provider(args.latency_ms) as fake, bench_services("batch_lane", fake) as bench:
        httpx.post(
            f"{fake.url}/_fake/batches/script", json={"turnaround_s": args.turnaround_s},
            timeout=10,
        ).raise_for_status()  # fmt: skip
        env = bench.env | {
            "LLMQ_BATCH_LANE_MAX_AGE_S": str(args.max_age_s),
            "LLMQ_BATCH_LANE_INTERVAL_S": "0.5",
            "LLMQ_BATCH_LANE_POLL_S": "1",
            "LLMQ_BATCH_LANE_POLL_MAX_S": "5",
            "LLMQ_RECONCILE_INTERVAL_S": "1",
        }
        for lane in ("sync", "provider_batch"):
            print(f"running {lane} ...", flush=True)
            rows.append(run_lane(env, bench.log_dir, lane, args))
        created = httpx.get(f"{fake.url}/_fake/stats", timeout=10).json()["batches_created"]

    sync, lane = rows
    ratio = Decimal(lane["cost_usd"]) / Decimal(sync["cost_usd"])
    print(
        f"\n{args.jobs} summaries on {FAKE_CHAIN[0]}, fake latency {args.latency_ms:g} ms, "
        f"upstream turnaround {args.turnaround_s:g} s, lane max age {args.max_age_s:g} s"
    )
    print(f"{'lane':16s} {'$/1000':>10s} {'s to finish':>11s} {'uploads':>7s}  statuses")
    for r in rows:
        print(
            f"{r['lane']:16s} {Decimal(r['cost_per_1000_usd']):10.6f} {r['seconds']:11.2f} "
            f"{r['upstream_batches']:7d}  {r['status_counts']}"
        )
    print(f"\nlane / sync cost: {ratio:.4f}; time: {lane['seconds'] / sync['seconds']:.2f}x")
    write_results(
        "batch_lane",
        {
            "command": " ".join(["bench/batch_lane.py", *sys.argv[1:]]),
            "jobs": args.jobs,
            "link": FAKE_CHAIN[0],
            "latency_ms": args.latency_ms,
            "turnaround_s": args.turnaround_s,
            "max_age_s": args.max_age_s,
            "processes": args.processes,
            "concurrency_per_process": args.concurrency,
            "lane_over_sync_cost": str(round(ratio, 4)),
            "lane_over_sync_seconds": round(lane["seconds"] / sync["seconds"], 3),
            "upstream_batches_created": created,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
