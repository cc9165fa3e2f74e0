"""Connections to Postgres: a worker's pool follows the concurrency it was started with, and
llmq works through PgBouncer in transaction mode (the answer when workers x pool would exceed
max_connections). The PgBouncer tests start the `pgbouncer` binary and skip without it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from llmq import store
from llmq.localstack.embedded import free_port
from llmq.localstack.processes import Stack
from llmq.settings import Settings, get_settings
from llmq.store import engine as db_engine
from llmq.testing.fake_provider import FakeProviderServer, FakeScript
from tests.helpers import auth, wait_for

PGBOUNCER = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")
needs_pgbouncer = pytest.mark.skipif(
    PGBOUNCER is None,
    reason="pgbouncer is not installed (e.g. apt-get install pgbouncer); these tests run llmq "
    "through it",
)


def test_pool_size_follows_the_setting_or_the_slots_the_worker_runs() -> None:
    assert db_engine.pool_limits(Settings(worker_concurrency=100), slots=20) == (25, 10)
    assert db_engine.pool_limits(Settings(worker_concurrency=100), slots=None) == (105, 10)
    sized = Settings(db_pool_size=8, db_max_overflow=0)
    assert db_engine.pool_limits(sized, slots=20) == (8, 0)


def test_a_worker_sizes_its_pool_from_its_concurrency_not_the_setting(
    isolated_env: dict[str, str], tmp_path: Path
) -> None:
    stack = Stack(env={**isolated_env, "LLMQ_WORKER_CONCURRENCY": "100"}, log_dir=tmp_path)
    worker = stack.start_worker("sized", queues="llm.low", concurrency=3, pool="threads")
    try:
        # Its reconciler opens the engine as soon as the worker is ready.
        line = wait_for(
            lambda: next((x for x in worker.tail(200).splitlines() if "database pool" in x), None),
            60,
            "the worker to open its database pool",
        )
    finally:
        stack.stop()
    assert "database pool: 8 connections + 10 overflow" in line  # 3 slots + 5 of its own


@pytest.fixture()
def pgbouncer(isolated_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """A pgbouncer in transaction mode in front of the test database; yields its URL. Two
    server connections, so clients really share them between transactions."""
    if PGBOUNCER is None:
        pytest.skip("pgbouncer is not installed")
    url = make_url(isolated_env["DATABASE_URL"])
    port = free_port()
    # Readable by the user pgbouncer drops to when started as root (it refuses to run as root).
    conf_dir = Path(tempfile.mkdtemp(prefix="llmq-pgbouncer-"))
    conf_dir.chmod(0o755)
    ini = conf_dir / "pgbouncer.ini"
    ini.write_text(
        f"[databases]\n{url.database} = host={url.host} port={url.port} "
        f"dbname={url.database} user={url.username}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = any\npool_mode = transaction\ndefault_pool_size = 2\n"
        "max_client_conn = 200\n"
    )
    ini.chmod(0o644)
    args = [PGBOUNCER, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(ini)]
    log = (tmp_path / "pgbouncer.log").open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    bouncer_url = url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    plain = url.set(drivername="postgresql", host="127.0.0.1", port=port)

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError((tmp_path / "pgbouncer.log").read_text())
        try:
            with psycopg.connect(plain.render_as_string(hide_password=False), connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    try:
        wait_for(answers, 20, "pgbouncer to accept connections")
        yield bouncer_url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        shutil.rmtree(conf_dir, ignore_errors=True)


@pytest.fixture()
def no_prepared_statements(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("LLMQ_DB_PREPARED_STATEMENTS", "false")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


@needs_pgbouncer
def test_statements_repeated_across_pgbouncer_server_connections_work(
    pgbouncer: str, no_prepared_statements: None
) -> None:
    """psycopg prepares a statement on its 5th run; in transaction mode the next transaction
    may run on another server connection, where it does not exist (PgBouncer < 1.21)."""
    engine = db_engine.get_engine(pgbouncer)
    query = text("SELECT count(*) FROM jobs WHERE status = :s")
    try:
        with engine.connect() as a, engine.connect() as b:
            for _ in range(6):  # prepared on the server connection it ran on
                a.execute(query, {"s": "queued"})
                a.commit()
            b.execute(text("SELECT 1"))  # b's open transaction now holds that connection
            assert a.execute(query, {"s": "queued"}).scalar_one() >= 0  # on the other one
            b.rollback()
    finally:
        engine.dispose()


@needs_pgbouncer
def test_jobs_run_end_to_end_through_pgbouncer_in_transaction_mode(
    isolated_env: dict[str, str],
    pgbouncer: str,
    fake_provider: FakeProviderServer,
    tmp_path: Path,
) -> None:
    fake_provider.set_script(FakeScript())
    env = {**isolated_env, "DATABASE_URL": pgbouncer, "LLMQ_DB_PREPARED_STATEMENTS": "false"}
    key = store.create_api_key(db_engine.get_engine(isolated_env["DATABASE_URL"]), "bouncer")
    stack = Stack(env=env, log_dir=tmp_path / "logs")
    port = free_port()
    try:
        api_process = stack.start_api("127.0.0.1", port)
        worker = stack.start_worker("bounced", queues="llm.high,llm.default,llm.low",
                                    concurrency=8, pool="threads")  # fmt: skip
        api = f"http://127.0.0.1:{port}"
        items = [{"custom_id": str(i), "input": f"Report {i}. The bridge reopened."}
                 for i in range(40)]  # fmt: skip
        created = httpx.post(
            f"{api}/v1/batches",
            json={"items": items, "chain": ["openai:gpt-4o-mini"]},
            headers=auth(key),
            timeout=30,
        )
        assert created.status_code == 202, created.text
        batch_url = f"{api}/v1/batches/{created.json()['id']}"

        def completed() -> dict[str, Any] | None:
            batch = httpx.get(batch_url, headers=auth(key), timeout=10).json()
            return batch if batch["status"] == "completed" else None

        batch = wait_for(completed, 120, "the batch to complete through pgbouncer")
    finally:
        stack.stop()
    assert batch["counts"]["succeeded"] == 40, batch
    for child in (api_process, worker):
        assert "prepared statement" not in child.tail(500)


def test_an_api_process_sizes_its_pool_for_its_handlers_not_the_workers_setting(
    isolated_env: dict[str, str],
) -> None:
    """The API runs at most 40 sync handlers at once: its pool is 40 + 5, whatever
    LLMQ_WORKER_CONCURRENCY (a worker's setting) says."""
    probe = "from llmq.api.app import create_app; print(create_app().state.engine.pool.size())"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, **isolated_env, "LLMQ_WORKER_CONCURRENCY": "500"},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert out.stdout.strip().splitlines()[-1] == str(db_engine.API_SLOTS + 5)
