"""Where does a worker spend its CPU? py-spy samples one llmq worker process under load.

    .venv/bin/python bench/profile.py [--jobs 3000] [--latency-ms 100] [--seconds 20]
                                      [--pool threads|gevent] [--waits]

One worker (at the concurrency docs/operations.md recommends) runs a batch against the fake
provider while py-spy records it: only the thread holding the GIL (Python CPU, not waits), or
every thread with --waits. Prints the functions with the most own time and the share of
samples under each pipeline stage, and writes bench/results/profile.json and a flame graph
bench/results/profile.svg. Needs py-spy (bench extra) and permission to ptrace a process of
the same user.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (
    RESULTS,
    bench_services,
    count_jobs,
    fake_provider,
    wait_until,
    wait_workers,
    write_results,
)
from llmq import store
from llmq.localstack.processes import Stack

DOC = (
    "The harbour master reported that 412 ships called at the port last quarter, 9% more than "
    "a year earlier. Congestion peaked in March; a second pilot boat is on order."
)

# (function, file) of the frames that name a pipeline stage: a sample is counted for the
# innermost one on its stack.
STAGES = {
    ("claim_job", "store.py"): "claim (SQL)",
    ("record_attempt", "store.py"): "record attempt (SQL)",
    ("finish_job", "store.py"): "finish (SQL)",
    ("run_chain", "guardrails/"): "guardrails",
    ("complete", "providers/"): "provider call (SDK + HTTP)",
    ("allow", "circuit.py"): "circuit breaker",
    ("record", "circuit.py"): "circuit breaker",
    ("acquire", "ratelimit.py"): "rate limiter",
    ("reserve", "budgets.py"): "budgets",
    ("settle", "budgets.py"): "budgets",
    ("get", "cache.py"): "cache",
    ("put", "cache.py"): "cache",
    ("job_changed", "events.py"): "events",
    ("run", "pipeline.py"): "pipeline (other)",
    ("span", "tracing.py"): "tracing",
    ("publish_jobs", "dispatch.py"): "batch fan-out (publishing)",
    ("run_job", "llmq/tasks/"): "task wrapper (logging, telemetry)",
    ("trace_task", "celery/app/trace.py"): "celery task execution",
    ("on_task_received", "celery/worker/"): "celery message intake",
    ("_deliver", "kombu/"): "kombu message intake",
    ("_brpop_read", "kombu/"): "kombu message intake",
    ("ack", "kombu/"): "kombu ack",
}


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        name, _, where = frame.partition(" (")
        name = name.rpartition(".")[2]  # py-spy names methods Class.method
        for (function, file), label in STAGES.items():
            if name == function and file in where:
                return label
    return "celery / kombu / other"


def collapse(raw: Path) -> tuple[Counter[str], Counter[str], int]:
    """Own time per function and samples per stage from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        stages[stage_of(frames)] += count
    return own, stages, total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--pool", default="threads", choices=["threads", "gevent"])
    parser.add_argument(
        "--waits", action="store_true", help="sample waiting too (all threads, not only the GIL's)"
    )
    parser.add_argument("--keep-raw", action="store_true", help="keep py-spy's collapsed stacks")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with fake_provider(args.latency_ms) as fake, bench_services("profile", fake) as bench:
        key = store.create_api_key(bench.engine, "profile")
        principal = store.authenticate(bench.engine, key)
        assert principal is not None
        stack = Stack(env=bench.env, log_dir=bench.log_dir)
        worker = stack.start_worker(
            "profile", queues="llm.high,llm.default,llm.low", concurrency=args.concurrency,
            pool=args.pool,
        )  # fmt: skip
        try:
            wait_workers(bench.env["REDIS_URL"], 1)
            batch_id = store.insert_batch(
                bench.engine, tenant_id=principal.tenant_id, template="summarize",
                template_version=1, priority="default", chain=["openai:gpt-4o-mini"], meta={},
                items=[store.NewJob(input=f"{DOC} ({i})", params={"no_cache": True})
                       for i in range(args.jobs)],
            )  # fmt: skip
            from llmq.workers.celery_app import make_celery
            from llmq.workers.dispatch import DISPATCH_BATCH

            make_celery(bench.env["REDIS_URL"]).send_task(
                DISPATCH_BATCH, args=[str(batch_id)], queue="llm.default"
            )
            # Start sampling once jobs flow, so start-up is not in the profile.
            wait_until(lambda: count_jobs(bench.engine, batch_id, "succeeded") >= 100, 120)
            raw = RESULTS / "profile.raw.txt"
            svg = RESULTS / "profile.svg"
            started = time.perf_counter()
            done_before = count_jobs(bench.engine, batch_id, "succeeded")
            for fmt, out in (("raw", raw), ("flamegraph", svg)):
                subprocess.run(
                    [py_spy, "record", "--pid", str(worker.proc.pid), "--duration",
                     str(args.seconds // 2), "--rate", "200", "--format", fmt, "--output",
                     str(out), "--nonblocking", *(["--idle"] if args.waits else ["--gil"])],
                    check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            elapsed = time.perf_counter() - started
            done = count_jobs(bench.engine, batch_id, "succeeded") - done_before
        finally:
            stack.stop()
    own, stages, total = collapse(raw)
    if not args.keep_raw:
        raw.unlink()
    print(f"{done} jobs in {elapsed:.1f} s sampled ({done / elapsed:.0f} jobs/s), {total} samples")
    print("\nsamples by stage")
    for name, count in stages.most_common():
        print(f"  {name:32s} {100 * count / total:5.1f} %")
    print("\nfunctions with the most own time")
    for frame, count in own.most_common(15):
        print(f"  {100 * count / total:5.1f} %  {frame[:110]}")
    write_results(
        "profile",
        {
            "jobs_per_s_while_sampled": round(done / elapsed, 1),
            "samples": total,
            "stages_pct": {k: round(100 * v / total, 1) for k, v in stages.most_common()},
            "top_own_pct": {k: round(100 * v / total, 1) for k, v in own.most_common(15)},
        },
    )


if __name__ == "__main__":
    main()
