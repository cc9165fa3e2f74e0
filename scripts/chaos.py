"""Run llmq's fault scenarios on a private stack and print what the record of truth shows.

    .venv/bin/python scripts/chaos.py                  # every scenario (about 4 minutes)
    .venv/bin/python scripts/chaos.py kill-worker error-storm

Each scenario starts its own embedded PostgreSQL and Redis, a fake provider and real Celery
worker processes, breaks something mid-batch (see llmq/testing/chaos.py), waits for every job to
end, and audits Postgres. Results go to bench/results/chaos.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from llmq.testing import chaos

EXPECTED_JOBS = {"error-storm": 200, "poison-job": 10, "refused-connections": 300}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenarios", nargs="*", choices=[*chaos.SCENARIOS, []], default=[])
    parser.add_argument("--out", default="bench/results/chaos.json")
    args = parser.parse_args()
    names = args.scenarios or list(chaos.SCENARIOS)
    results = []
    print(f"{'scenario':<20}{'jobs':>6}{'ok':>6}{'other':>7}{'paid 2x':>9}{'totals off':>12}"
          f"{'redelivered':>13}{'seconds':>9}  verdict")  # fmt: skip
    for name in names:
        started = time.monotonic()
        with chaos.rig(env=chaos.SCENARIO_ENV.get(name)) as rig:
            audit = chaos.SCENARIOS[name](rig)
        elapsed = time.monotonic() - started
        jobs = EXPECTED_JOBS.get(name, 60)
        ok = audit.exactly_once(jobs)
        succeeded = audit.statuses.get("succeeded", 0)
        print(f"{name:<20}{jobs:>6}{succeeded:>6}{sum(audit.statuses.values()) - succeeded:>7}"
              f"{audit.jobs_paid_twice:>9}{audit.totals_mismatched:>12}{audit.redelivered:>13}"
              f"{elapsed:>9.1f}  {'exactly once' if ok else 'FAILED'}"
              f"  {json.dumps(audit.observed, default=str) if audit.observed else ''}")  # fmt: skip
        results.append({"scenario": name, "jobs": jobs, "exactly_once": ok,
                        "seconds": round(elapsed, 1), **asdict(audit)})  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results}, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["exactly_once"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
