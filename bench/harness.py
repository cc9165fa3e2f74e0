"""What every benchmark needs: embedded PostgreSQL + Redis, a fake provider in its own process,
waiting for workers and for jobs, and writing results (JSON, and a PNG chart) under
bench/results/. Benchmarks run against the embedded services so a user's numbers do not depend
on what else their machine runs; nothing here is used by the product.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from llmq.db.engine import get_engine  # noqa: E402
from llmq.db.migrate import upgrade  # noqa: E402
from llmq.embedded import embedded_services, free_port  # noqa: E402
from llmq.fake_provider import FakeScript  # noqa: E402
from llmq.stack import wait_http  # noqa: E402


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> float:
    """Seconds until `predicate()` held; TimeoutError after `timeout`."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("benchmark run did not finish in time")
        time.sleep(interval)
    return time.perf_counter() - start


def wait_workers(redis_url: str, count: int, app: Any = None, timeout: float = 60) -> None:
    """Until `count` workers answer a remote-control ping (i.e. are consuming)."""
    if app is None:
        from workers.celery_app import make_celery

        app = make_celery(redis_url)
    wait_until(lambda: len(app.control.ping(timeout=0.5) or []) >= count, timeout)


def count_jobs(engine: Engine, batch_id: Any, status: str | None = None) -> int:
    sql = "SELECT count(*) FROM jobs WHERE batch_id = :b"
    if status is not None:
        sql += " AND status = :s"
    with engine.connect() as conn:
        return int(conn.execute(text(sql), {"b": batch_id, "s": status}).scalar_one())


@dataclass
class FakeProvider:
    """The fake OpenAI/Anthropic server, in its own process so its CPU is not the driver's."""

    url: str
    proc: subprocess.Popen[bytes]

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    def set_script(self, script: FakeScript) -> None:
        response = httpx.put(
            f"{self.url}/_fake/script", content=script.model_dump_json(), timeout=10
        )
        response.raise_for_status()


@contextmanager
def fake_provider(latency_ms: float) -> Iterator[FakeProvider]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmq.cli",
            "fake-provider",
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/_fake/health")
        yield FakeProvider(url, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class BenchServices:
    env: dict[str, str]
    engine: Engine
    data_dir: Path
    log_dir: Path


@contextmanager
def bench_services(name: str, fake: FakeProvider | None = None) -> Iterator[BenchServices]:
    """Embedded PostgreSQL + Redis (not durable: a benchmark keeps nothing), migrated; their
    URLs (and the fake provider's) are put in os.environ for the driver and in `env` for
    child processes."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"llmq-bench-{name}-"))
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True)
    with embedded_services(data_dir, durable=False) as services:
        upgrade(services.database_url)
        env = {
            "DATABASE_URL": services.database_url,
            "REDIS_URL": services.redis_url,
            "LLMQ_LOG_LEVEL": "WARNING",
        }
        if fake is not None:
            env |= {"OPENAI_API_KEY": "bench", "OPENAI_BASE_URL": fake.openai_base_url}
        os.environ.update(env)
        yield BenchServices(env, get_engine(services.database_url), data_dir, log_dir)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """bench/results/<name>.json, stamped with the machine and the time of the run."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    stamped = {"machine": machine(), "run_at": datetime.now(UTC).isoformat(timespec="seconds")}
    out.write_text(json.dumps(stamped | payload, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def bar_chart(
    name: str, labels: Sequence[str], values: Sequence[float], *, title: str, ylabel: str
) -> Path:
    """bench/results/<name>.png: one bar per setup, its value printed on it."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers or in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    bars = ax.bar(list(labels), list(values), color="#4c72b0")
    ax.bar_label(bars, fmt="%.1f")
    ax.set_title(f"{title}\n{machine()}", fontsize=10)
    ax.set_ylabel(ylabel)
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right")
    fig.tight_layout()
    out = RESULTS / f"{name}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")
    return out


def line_chart(
    name: str,
    x: Sequence[float],
    series: dict[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """bench/results/<name>.png: one line per series over the same x values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, values in series.items():
        ax.plot(list(x), list(values), marker="o", label=label)
    ax.set_xticks(list(x))
    ax.set_title(f"{title}\n{machine()}", fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = RESULTS / f"{name}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")
    return out


# --- latency helpers (ingest, API latency, overhead) -------------------------------------------

from llmq.stack import Child, Stack  # noqa: E402


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """{"p50": ..., "p95": ..., "p99": ..., "n": ...}, rounded to 0.01."""
    out: dict[str, float] = {f"p{q:g}": round(percentile(values, q), 2) for q in qs}
    out["n"] = len(values)
    return out


def process_tree(pid: int) -> list[int]:
    """`pid` and all its live descendants (uvicorn --workers, prefork children), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name (field 2) may hold spaces; the fields after its ')' do not.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def proc_status_kb(pid: int, field: str) -> int:
    """A "kB" line of /proc/<pid>/status: VmHWM (peak RSS) or VmRSS (current RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def tree_memory_mb(pid: int, field: str = "VmHWM") -> dict[str, float]:
    """`field` of `pid` and of each descendant, and their sum, in MB. The sum of peaks is an
    upper bound of the tree's peak (the processes need not peak at the same moment)."""
    per_process = {}
    for member in process_tree(pid):
        try:
            per_process[str(member)] = round(proc_status_kb(member, field) / 1024, 1)
        except (OSError, KeyError):
            continue
    return {"total": round(sum(per_process.values()), 1), **per_process}


def start_api(stack: Stack, port: int, workers: int = 1) -> Child:
    """Like `Stack.start_api`, with `llmq api --workers N` (uvicorn worker processes)."""
    child = stack._spawn(
        "api", ["api", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    )
    wait_http(f"http://127.0.0.1:{port}/healthz", child, timeout=120)  # N imports of the app
    return child


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its live descendants."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")
