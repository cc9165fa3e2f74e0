"""Every benchmark of issue 7, one after another, as one command (`make bench`).

    .venv/bin/python bench/run_all.py [--quick] [--only pools,scaling]

Each script is run as its own process (so one's workers and memory never touch the next),
prints its table, and writes bench/results/<name>.json and .png; this prints a summary of
what ran, how long it took, and whether it succeeded, and writes bench/results/run_all.json.
--quick runs small sizes (a smoke test, minutes); the default sizes are the ones docs/benchmarks.md
quotes. Run it on a quiet machine: the ratios are measured within one run, but a neighbour
that takes a core shows up in every number.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import ROOT, write_results

# name -> (arguments for the full run, arguments for --quick)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "ingest": ([], ["--items", "2000", "--repeat", "1"]),
    "pools": (["--gevent"], ["--jobs", "1000"]),
    "overhead": ([], ["--jobs", "60"]),
    "api_latency": (["--api-workers", "1", "2"], ["--duration", "10", "--prepare", "100"]),
    "scaling": ([], ["--jobs", "120", "--processes", "1,2"]),
    "priority": ([], ["--low-jobs", "1000", "--probes", "3"]),
    "faults": ([], ["--jobs", "500"]),
    "profile": ([], ["--jobs", "1500", "--seconds", "6"]),
    "evals": ([], ["--rounds", "3", "--pairs", "2000"]),
    "batch_lane": ([], ["--jobs", "200", "--turnaround-s", "5"]),
    "saturation": ([], ["--quick"]),
    "slow_provider": ([], ["--quick"]),
    "semantic_cache": ([], ["--quick"]),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--only", default="", help="comma-separated names, e.g. pools,scaling")
    args = parser.parse_args()
    chosen = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    summary = []
    for name in chosen:
        full, quick = BENCHMARKS[name]
        command = [sys.executable, f"bench/{name}.py", *(quick if args.quick else full)]
        print(f"\n=== {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        code = subprocess.call(command, cwd=ROOT)
        seconds = round(time.perf_counter() - started, 1)
        summary.append({"benchmark": name, "command": " ".join(command[1:]),
                        "exit_code": code, "seconds": seconds})  # fmt: skip
    print("\nbenchmark      seconds  result")
    for row in summary:
        result = "ok" if row["exit_code"] == 0 else f"FAILED ({row['exit_code']})"
        print(f"{row['benchmark']:14s} {row['seconds']:7.1f}  {result}")
    write_results("run_all", {"quick": args.quick, "runs": summary})
    if any(row["exit_code"] for row in summary):
        sys.exit(1)


if __name__ == "__main__":
    main()
