"""What every benchmark needs: embedded PostgreSQL + Redis, a fake provider in its own process,
waiting for workers and for jobs, and writing results (JSON, and a PNG chart) under
bench/results/. Benchmarks run against the embedded services so a user's numbers do not depend
on what else their machine runs; nothing here is used by the product.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
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

from llmq.localstack.embedded import embedded_services, free_port  # noqa: E402
from llmq.localstack.processes import Child, Stack, wait_http  # noqa: E402
from llmq.store.engine import get_engine  # noqa: E402
from llmq.store.migrate import upgrade  # noqa: E402
from llmq.testing.fake_provider import FakeScript  # noqa: E402


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
        from llmq.workers.celery_app import make_celery

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
def fake_provider(latency_ms: float, extra: Sequence[str] = ()) -> Iterator[FakeProvider]:
    """`extra`: more `llmq fake-provider` options (e.g. --rpm/--tpm)."""
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
            *extra,
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
    child processes. The data directory is deleted afterwards; a failed run keeps its logs."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"llmq-bench-{name}-"))
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True)
    failed = True
    try:
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
        failed = False
    finally:
        for child in data_dir.iterdir():
            if not (failed and child == log_dir):
                shutil.rmtree(child, ignore_errors=True)
        if failed:
            print(f"logs of the failed run: {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """bench/results/<name>.json, stamped with the machine and the time of the run."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    stamped = {"machine": machine(), "run_at": datetime.now(UTC).isoformat(timespec="seconds")}
    out.write_text(json.dumps(stamped | payload, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def bar_chart(
    name: str,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    ylabel: str,
    log: bool = False,
    fmt: str = "%.1f",
) -> Path:
    """bench/results/<name>.png: one bar per setup, its value printed on it. `log` for values
    orders of magnitude apart (a fraction of a second next to a minute)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers or in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    bars = ax.bar(list(labels), list(values), color="#4c72b0")
    ax.bar_label(bars, fmt=fmt)
    if log:
        ax.set_yscale("log")
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


# --------------------------------------------------------------------------- throughput family
# Shared by bench/pools.py, scaling.py, priority.py and faults.py: a tenant, a batch of
# distinct jobs submitted the way the API does, llmq worker processes, waiting on a batch, and
# the memory of worker processes.

DOC = (
    "The port authority approved a new container terminal on Tuesday. It will cost 240 "
    "million euros and add 1,200 jobs. Construction begins next spring. Environmental groups "
    "asked for a review of dredging plans; the authority agreed to publish one in June."
)
ALL_QUEUES = "llm.high,llm.default,llm.low"
FAKE_CHAIN = ["openai:gpt-4o-mini"]  # the fake provider behind OPENAI_BASE_URL


def bench_tenant(engine: Engine, name: str) -> Any:
    """A fresh tenant (via an API key): its id."""
    from llmq import store

    principal = store.authenticate(engine, store.create_api_key(engine, name))
    assert principal is not None
    return principal.tenant_id


def insert_jobs(
    engine: Engine, tenant_id: Any, count: int, *, priority: str = "default", label: str = ""
) -> Any:
    """One batch of `count` distinct summarize jobs, cache off (every job calls the provider),
    written in one transaction as POST /v1/batches does: the batch id."""
    from llmq import store

    return store.insert_batch(
        engine,
        tenant_id=tenant_id,
        template="summarize",
        template_version=1,
        priority=priority,
        chain=list(FAKE_CHAIN),
        meta={},
        items=[
            store.NewJob(input=f"{DOC} ({label}{i})", params={"no_cache": True})
            for i in range(count)
        ],
    )


def dispatch_batch(redis_url: str, batch_id: Any, priority: str = "default") -> float:
    """Publish the batch's fan-out task as the API does; the wall-clock time (epoch s) just
    before, which is when a benchmark's clock starts."""
    from llmq.settings import PRIORITY_TO_QUEUE
    from llmq.workers.celery_app import make_celery
    from llmq.workers.dispatch import DISPATCH_BATCH

    app = make_celery(redis_url)
    started = time.time()
    app.send_task(DISPATCH_BATCH, args=[str(batch_id)], queue=PRIORITY_TO_QUEUE[priority])
    return started


def status_counts(engine: Engine, batch_id: Any) -> dict[str, int]:
    sql = "SELECT status, count(*) FROM jobs WHERE batch_id = :b GROUP BY status"
    with engine.connect() as conn:
        return {str(s): int(n) for s, n in conn.execute(text(sql), {"b": batch_id})}


FINAL = ("succeeded", "failed", "blocked", "cancelled", "expired")


def wait_batch(
    engine: Engine,
    batch_id: Any,
    jobs: int,
    timeout: float,
    check: Callable[[], None] | None = None,
) -> float:
    """Until every job of the batch is in a final state; the epoch time the last one finished
    (from Postgres, so the polling interval does not add to the measurement)."""

    def done() -> bool:
        if check is not None:
            check()
        counts = status_counts(engine, batch_id)
        return sum(counts.get(s, 0) for s in FINAL) >= jobs

    wait_until(done, timeout, interval=0.25)
    sql = "SELECT extract(epoch FROM max(finished_at)) FROM jobs WHERE batch_id = :b"
    with engine.connect() as conn:
        return float(conn.execute(text(sql), {"b": batch_id}).scalar_one())


@contextmanager
def llmq_workers(
    env: dict[str, str],
    log_dir: Path,
    name: str,
    *,
    processes: int,
    concurrency: int,
    pool: str = "threads",
    queues: str = ALL_QUEUES,
) -> Iterator[Any]:
    """`processes` x `llmq worker --pool POOL --concurrency N`, consuming once this yields (the
    Stack: check_alive() and the children's pids); stopped on exit."""
    stack = Stack(env=env, log_dir=log_dir)
    try:
        for index in range(processes):
            stack.start_worker(f"{name}-{index}", queues=queues, concurrency=concurrency, pool=pool)
        wait_workers(env["REDIS_URL"], processes)
        yield stack
    finally:
        stack.stop()


def _vm_hwm_bytes(pid: int) -> int | None:
    """The kernel's peak resident set of a process (Linux /proc; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class MemoryWatch:
    """Peak resident memory of process trees (a worker and its pool's children), sampled by a
    thread while the benchmark runs. Per tree: the peak of the summed RSS (children share pages
    with their parent, so for prefork this over-counts), and the largest single process's peak,
    taken from the kernel's high-water mark (VmHWM) where it exists so a spike between two
    samples is not missed."""

    def __init__(self, roots: dict[str, int], interval: float = 0.25) -> None:
        import threading

        import psutil  # comes with the [bench] extra (locust depends on it)

        self._psutil = psutil
        self.roots = roots
        self.interval = interval
        self.tree_peak: dict[str, int] = dict.fromkeys(roots, 0)
        self.process_peak: dict[str, int] = dict.fromkeys(roots, 0)
        self.process_count: dict[str, int] = dict.fromkeys(roots, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # the processes are still alive here: read their high-water marks

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        psutil = self._psutil
        for name, pid in self.roots.items():
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            total = 0
            for proc in procs:
                try:
                    rss = int(proc.memory_info().rss)
                except psutil.Error:
                    continue
                total += rss
                peak = max(rss, _vm_hwm_bytes(proc.pid) or 0)
                self.process_peak[name] = max(self.process_peak[name], peak)
            self.tree_peak[name] = max(self.tree_peak[name], total)
            self.process_count[name] = max(self.process_count[name], len(procs))

    def report(self) -> dict[str, dict[str, float]]:
        """MiB per tree: peak of one process, peak of the tree's sum, and how many processes."""
        mib = 1024 * 1024
        return {
            name: {
                "peak_rss_process_mib": round(self.process_peak[name] / mib, 1),
                "peak_rss_tree_mib": round(self.tree_peak[name] / mib, 1),
                "processes": self.process_count[name],
            }
            for name in self.roots
        }


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by these processes and their children: read
    before and after a run, the difference is the workers' CPU for that run."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in procs:
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
    return total


def finish_times(engine: Engine, batch_id: Any) -> list[float]:
    """Epoch seconds at which each finished job of the batch finished, in order."""
    sql = (
        "SELECT extract(epoch FROM finished_at) FROM jobs "
        "WHERE batch_id = :b AND finished_at IS NOT NULL ORDER BY finished_at"
    )
    with engine.connect() as conn:
        return [float(t) for t in conn.execute(text(sql), {"b": batch_id}).scalars()]


def steady_rate(times: Sequence[float], low: float = 0.1, high: float = 0.9) -> float | None:
    """Jobs/s between the `low` and `high` quantiles of the finish times: the rate once the
    pool is full and before the last jobs trickle out (start-up ramp and tail excluded)."""
    if len(times) < 10:
        return None
    first, last = int(low * (len(times) - 1)), int(high * (len(times) - 1))
    span = times[last] - times[first]
    return (last - first) / span if span > 0 else None


# --- latency helpers (ingest, API latency, overhead) -------------------------------------------


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


# --- child processes ------------------------------------------------------------------------


def celery_worker_command(
    app: str, name: str, pool: str, concurrency: int, queue: str
) -> list[str]:
    """`celery worker` for a bench app (or llmq's own, for a queue `llmq worker` refuses)."""
    return [
        sys.executable, "-m", "celery", "-A", app, "worker", "-n", f"{name}@%h",
        "-P", pool, "-c", str(concurrency), "-Q", queue,
        "--without-mingle", "--without-gossip", "-l", "WARNING",
    ]  # fmt: skip


def spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A child process in the repository root, its output appended to `log_path`."""
    log = open(log_path, "ab")  # noqa: SIM115 (the child owns it)
    return subprocess.Popen(
        args, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
    )


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM all, then SIGKILL whoever has not left after 30 s."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
