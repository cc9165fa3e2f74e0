"""The embedded default as root from a private (0700) directory: a clone in /root, or in a
`mktemp -d` dir. PostgreSQL refuses to run as root, so it runs as llmq-postgres, which cannot
enter such a directory; the binaries and the cluster must be placed where it can, without
loosening the user's directory. Runs only as root (the arrangement does not exist otherwise)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from llmq.localstack import embedded
from llmq.localstack.embedded import ROOT_RUNTIME_DIR, embedded_services, remove_data_dir

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="only as root is PostgreSQL run as another user (llmq-postgres)"
)


def _private_site(tmp_path: Path) -> tuple[Path, Path]:
    """(a 0700 dir, a site dir inside it holding a copy of the pgserver wheel): the layout of
    a checkout's .venv under /root, without building a venv."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    spec = importlib.util.find_spec("pgserver")
    assert spec is not None and spec.submodule_search_locations
    source = Path(next(iter(spec.submodule_search_locations))).parent
    site = private / "site"
    shutil.copytree(
        source / "pgserver", site / "pgserver", ignore=shutil.ignore_patterns("include")
    )
    if (source / "pgserver.libs").is_dir():
        shutil.copytree(source / "pgserver.libs", site / "pgserver.libs")
    return private, site


def test_demo_runs_as_root_from_a_private_directory(tmp_path: Path) -> None:
    private, site = _private_site(tmp_path)
    (private / "tmp").mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
    }
    # The binaries come from the private copy; the demo's data dir is private too (mktemp -d).
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    env["TMPDIR"] = str(private / "tmp")
    found = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('pgserver').origin)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert found.stdout.startswith(str(site)), found.stdout

    result = subprocess.run(
        [sys.executable, "-m", "llmq.cli", "demo"],
        env=env,
        cwd=private,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("demo: 22 documents, 22 succeeded, 0 failed, "), last
    assert stat.S_IMODE(private.stat().st_mode) == 0o700  # not opened up to make it work
    assert list((private / "tmp").glob("llmq-demo-*")) == []  # the demo's data dir is gone


def test_a_private_data_dir_as_root_keeps_its_cluster_outside_and_cleans_it_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private, site = _private_site(tmp_path)
    monkeypatch.setattr(embedded, "_pg_site", lambda: site)
    data_dir = private / "data"

    def query(url: str, sql: str) -> object:
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchone() if cursor.description else None

    try:
        # Durable (`llmq up`): the cluster lives under ROOT_RUNTIME_DIR and survives a restart.
        with embedded_services(data_dir, durable=True) as running:
            pgdata = running.postgres.pgdata
            assert pgdata is not None and pgdata.parent == ROOT_RUNTIME_DIR
            assert pgdata.stat().st_uid != 0 and stat.S_IMODE(pgdata.stat().st_mode) == 0o700
            query(running.database_url, "CREATE TABLE kept (x int)")
        with embedded_services(data_dir, durable=True) as running:
            assert running.postgres.pgdata == pgdata
            assert query(running.database_url, "SELECT count(*) FROM kept") == (0,)
        # A data dir deleted by hand and made again starts empty: no stale cluster comes back.
        shutil.rmtree(data_dir)
        with embedded_services(data_dir, durable=True) as running:
            assert running.postgres.pgdata == pgdata
            assert query(running.database_url, "SELECT to_regclass('kept') IS NULL") == (True,)
    finally:
        remove_data_dir(data_dir)
    assert not pgdata.exists()

    # Throwaway (demo, tests): the cluster is deleted on exit.
    with embedded_services(private / "throwaway", durable=False) as running:
        throwaway = running.postgres.pgdata
        assert throwaway is not None and throwaway.parent == ROOT_RUNTIME_DIR
        assert query(running.database_url, "SELECT 1") == (1,)
    assert not throwaway.exists()
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
