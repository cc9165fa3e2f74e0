"""Time to accept a batch: POST /v1/batches with N items -> HTTP 202 with every row durable.

    .venv/bin/python bench/ingest.py [--items 10000 50000]

Runs the real API process (uvicorn) on embedded PostgreSQL and Redis with no worker, so the
measured time is validation + one COPY + commit + publishing the fan-out message. The baseline
in the same run is a trivial authenticated GET (the fixed cost of one request). Writes
bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmq import repository  # noqa: E402
from llmq.db.engine import get_engine  # noqa: E402
from llmq.db.migrate import upgrade  # noqa: E402
from llmq.embedded import embedded_services, free_port  # noqa: E402
from llmq.stack import Stack  # noqa: E402

DOC = (
    "The regional water board approved a new reservoir. It will store 40 million cubic "
    "metres and cost 310 million euros. Farmers asked for a share of the new capacity."
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="llmq-ingest-"))
    results = []
    with embedded_services(data_dir, durable=False) as services:
        upgrade(services.database_url)
        env = {"DATABASE_URL": services.database_url, "REDIS_URL": services.redis_url}
        os.environ.update(env)
        engine = get_engine(services.database_url)
        # Unlimited: the benchmark measures ingest, not the per-key rate limit.
        key = repository.create_api_key(engine, "ingest", requests_per_min=0, items_per_min=0)
        port = free_port()
        stack = Stack(env=env, log_dir=data_dir / "logs")
        stack.start_api("127.0.0.1", port)
        try:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                timeout=120,
                headers={"Authorization": f"Bearer {key}"},
            ) as client:
                baseline = []
                for _ in range(20):
                    start = time.perf_counter()
                    client.get("/v1/jobs/00000000-0000-0000-0000-000000000000")
                    baseline.append(time.perf_counter() - start)
                base_ms = statistics.median(baseline) * 1000
                print(f"baseline GET (404)          {base_ms:8.1f} ms")
                for n in args.items:
                    body = json.dumps(
                        {"items": [{"custom_id": str(i), "input": f"{DOC} {i}"} for i in range(n)]}
                    )
                    times = []
                    for _ in range(args.repeat):
                        start = time.perf_counter()
                        response = client.post(
                            "/v1/batches",
                            content=body,
                            headers={"content-type": "application/json"},
                        )
                        elapsed = time.perf_counter() - start
                        assert response.status_code == 202, response.text[:300]
                        batch_id = response.json()["id"]
                        with engine.connect() as conn:
                            rows = conn.execute(
                                text("SELECT count(*) FROM jobs WHERE batch_id = :b"),
                                {"b": batch_id},
                            ).scalar()
                        assert rows == n  # durable: committed before the 202
                        times.append(elapsed)
                    median_ms = statistics.median(times) * 1000
                    print(
                        f"POST /v1/batches {n:>6} items {median_ms:8.1f} ms  "
                        f"({len(body) / 1e6:.1f} MB, {n / statistics.median(times):,.0f} "
                        f"items/s, {median_ms / base_ms:.0f}x a trivial request)"
                    )
                    results.append(
                        {
                            "items": n,
                            "median_ms": round(median_ms, 1),
                            "runs_ms": [round(t * 1000, 1) for t in times],
                            "body_mb": round(len(body) / 1e6, 2),
                            "vs_baseline_request": round(median_ms / base_ms, 1),
                        }
                    )
        finally:
            stack.stop()
    out = ROOT / "bench" / "results" / "ingest.json"
    out.write_text(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                f"Python {platform.python_version()}",
                "baseline_get_ms": round(base_ms, 2),
                "results": results,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
