"""How close llmq runs to a provider's rate limit it was never told (issue 20).

    .venv/bin/python bench/saturation.py [--quick] [--rpm 1200] [--tpm 2000000]
                                         [--window-s 10] [--windows 6] [--processes 3]

The fake provider (its own process) enforces --rpm and --tpm per model over a sliding window
of --window-s seconds (a short window so that several pass quickly; llmq's LLMQ_RATE_WINDOW_S
is set to the same, as it is 60 s for the real APIs' per-minute limits) and sends both
providers' rate-limit headers. No LLMQ_RATE_LIMITS is set. Two workloads run on
--processes worker processes, one after the other, each on its own model (its own limits):
  requests  short documents (~650 tokens a call with max_tokens): requests per minute bind
  tokens    long documents (~3,500 tokens a call): tokens per minute bind
each sized to keep the limit busy for --windows windows. The same run is made twice on the
same services: with adaptive limits (the default) and without (LLMQ_ADAPTIVE_RATE_LIMITS=false,
llmq before issue 20: it learns of the limit only from 429s and retries them).

Measured at the provider: the calls it admitted in the whole windows from its first admitted
call (so cold start counts, the last partial window does not), over what the limit allows in
those windows; the 429 share is rejected calls over all calls. Prints a table and, last,
`saturation: achieved A of limit L (R), 429 share S` for the adaptive run: A and L per minute
of the workload with the lower ratio R, S over both workloads. Writes
bench/results/saturation.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (
    DOC,
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

TIMEOUT = 900.0
MAX_TOKENS = 512  # the default LLMQ_MAX_OUTPUT_TOKENS, counted by the provider's token limit
LONG_REPEATS = 45  # DOC is ~65 tokens: ~3,000 tokens of prompt


def workload_jobs(args: argparse.Namespace) -> dict[str, int]:
    """Jobs per workload: enough to keep its binding limit busy for --windows windows."""
    per_window_req = args.rpm * args.window_s / 60
    per_window_tok = args.tpm * args.window_s / 60
    long_call = LONG_REPEATS * 70 + MAX_TOKENS
    return {
        "requests": math.ceil(per_window_req * args.windows),
        "tokens": math.ceil(per_window_tok / long_call * args.windows),
    }


def insert(engine: Any, tenant: Any, model: str, documents: list[str]) -> Any:
    return store.insert_batch(
        engine, tenant_id=tenant, template="summarize", template_version=1,
        priority="default", chain=[f"openai:{model}"], meta={},
        items=[store.NewJob(input=doc, params={"no_cache": True}) for doc in documents],
    )  # fmt: skip


def measure(stats: dict[str, Any], model: str, kind: str) -> dict[str, Any]:
    """What the provider admitted for `model` in whole windows, against its limit."""
    limits = stats["limits"]
    window = float(limits["window_s"])
    seen = limits["by_model"].get(model, {"admitted": [], "rejected": 0})
    admitted = sorted(seen["admitted"])
    rejected = int(seen["rejected"])
    limit = limits["requests_per_window" if kind == "requests" else "tokens_per_window"]
    result: dict[str, Any] = {"calls": len(admitted) + rejected, "rejected_429": rejected,
                              "share_429": rejected / max(1, len(admitted) + rejected)}  # fmt: skip
    if not admitted:
        return result | {"ratio": 0.0, "achieved_per_min": 0.0, "limit_per_min": 0.0}
    first, last = admitted[0][0], admitted[-1][0]
    windows = max(1, math.floor((last - first) / window))
    inside = [(t, n) for t, n in admitted if t < first + windows * window]
    used = len(inside) if kind == "requests" else sum(n for _, n in inside)
    per_min = 60 / window
    return result | {
        "windows": windows,
        "achieved_per_min": round(used / windows * per_min, 1),
        "limit_per_min": round(limit * per_min, 1),
        "ratio": round(used / (windows * limit), 4),
    }


def run(
    args: argparse.Namespace, env: dict[str, str], log_dir: Path, fake_url: str, adaptive: bool
) -> dict[str, Any]:
    label = "adaptive" if adaptive else "blind"
    run_env = {**env, "LLMQ_RATE_WINDOW_S": str(args.window_s),
               "LLMQ_ADAPTIVE_RATE_LIMITS": "true" if adaptive else "false"}  # fmt: skip
    engine = store_engine(env)
    tenant = bench_tenant(engine, f"saturation-{label}")
    sizes = workload_jobs(args)
    stamp = int(time.time())
    models = {kind: f"sat-{label}-{kind}-{stamp}" for kind in sizes}
    documents = {
        "requests": [f"{DOC} ({label} {i})" for i in range(sizes["requests"])],
        "tokens": [" ".join([DOC] * LONG_REPEATS) + f" ({label} {i})"
                   for i in range(sizes["tokens"])],
    }  # fmt: skip
    batches: dict[str, Any] = {}
    out: dict[str, Any] = {}
    with llmq_workers(run_env, log_dir, f"sat-{label}", processes=args.processes,
                      concurrency=args.concurrency) as stack:  # fmt: skip
        for kind, docs in documents.items():  # one workload after the other
            # Inserted just before its dispatch: the reconciler would start a batch left
            # waiting in Postgres for longer than LLMQ_DISPATCH_GRACE_S.
            batch_id = batches[kind] = insert(engine, tenant, models[kind], docs)
            started = dispatch_batch(env["REDIS_URL"], batch_id)
            ended = wait_batch(engine, batch_id, sizes[kind], TIMEOUT, stack.check_alive)
            out[kind] = {"seconds": round(ended - started, 1)}
    stats = httpx.get(f"{fake_url}/_fake/stats", timeout=30).json()
    for kind, batch_id in batches.items():
        counts = status_counts(engine, batch_id)
        out[kind] |= measure(stats, models[kind], kind) | {
            "jobs": sizes[kind],
            "succeeded": counts.get("succeeded", 0),
            "failed": counts.get("failed", 0),
        }
    calls = sum(out[kind]["calls"] for kind in sizes)
    out["share_429"] = round(sum(out[kind]["rejected_429"] for kind in sizes) / max(1, calls), 4)
    return out


def store_engine(env: dict[str, str]) -> Any:
    from llmq.store.engine import get_engine

    return get_engine(env["DATABASE_URL"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s windows, 3 of them (<2 min)")
    parser.add_argument("--rpm", type=int, default=1200)
    parser.add_argument("--tpm", type=int, default=2_000_000)
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=100)
    args = parser.parse_args()
    if args.quick:
        args.window_s, args.windows = 5.0, 3
    limits = ["--rpm", str(args.rpm), "--tpm", str(args.tpm),
              "--limit-window-s", str(args.window_s)]  # fmt: skip
    results: dict[str, Any] = {}
    with fake_provider(args.latency_ms, limits) as fake, bench_services("saturation", fake) as b:
        for adaptive in (True, False):
            label = "adaptive" if adaptive else "blind"
            print(f"running {label} ...", flush=True)
            results[label] = run(args, b.env, b.log_dir, fake.url, adaptive)
    report(args, results)


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    print(f"\nfake provider: {args.rpm} requests/min and {args.tpm} tokens/min per model, "
          f"{args.window_s:g} s sliding window; {args.processes} worker processes x "
          f"{args.concurrency} threads; no LLMQ_RATE_LIMITS")  # fmt: skip
    print(f"{'run':10s} {'workload':9s} {'binds':8s} {'achieved/min':>13s} {'limit/min':>11s} "
          f"{'ratio':>6s} {'429 share':>9s} {'ok/failed':>10s} {'seconds':>8s}")  # fmt: skip
    for label, out in results.items():
        for kind in ("requests", "tokens"):
            row = out[kind]
            print(f"{label:10s} {kind:9s} {kind:8s} {row['achieved_per_min']:13.0f} "
                  f"{row['limit_per_min']:11.0f} {row['ratio']:6.3f} {row['share_429']:9.3f} "
                  f"{row['succeeded']:>5d}/{row['failed']:<4d} {row['seconds']:8.1f}")  # fmt: skip
    write_results("saturation", {"args": vars(args), "results": results})
    adaptive = results["adaptive"]
    worst = min(("requests", "tokens"), key=lambda kind: adaptive[kind]["ratio"])
    row = adaptive[worst]
    print(f"saturation: achieved {row['achieved_per_min']:.0f} of limit "
          f"{row['limit_per_min']:.0f} ({row['ratio']:.3f}), "
          f"429 share {adaptive['share_429']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
