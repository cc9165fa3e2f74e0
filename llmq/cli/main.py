"""The `llmq` command line."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from llmq.errors import UserError
from llmq.localstack.services import database_url, services
from llmq.settings import QUEUES, ConfigFileError, Settings, get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
keys_app = typer.Typer(no_args_is_help=True, help="Manage API keys.")
app.add_typer(keys_app, name="keys")

ApiUrl = Annotated[str, typer.Option(envvar="LLMQ_API_URL", help="llmq API base URL")]
ApiKey = Annotated[str, typer.Option(envvar="LLMQ_API_KEY", help="API key (llmq keys create)")]


def _fail(message: str) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


def _database_unreachable(exc: Exception) -> str | None:
    """One line for a database that refuses connections, else None. SQLAlchemy is only looked
    up if a command imported it (the CLI starts without it)."""
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is None or not isinstance(exc, sa_exc.OperationalError):
        return None
    from sqlalchemy.engine import make_url

    url = make_url(database_url(get_settings())).render_as_string(hide_password=True)
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
    return f"cannot reach the database at {url} ({reason}): check DATABASE_URL"


def _setting(field: str) -> str:
    """How --help shows an option whose default is a setting: its env var and built-in value."""
    return f"LLMQ_{field.upper()} or {Settings.model_fields[field].default}"


def node_name(name: str) -> str:
    """Celery's node name for `--name`/`-n`: `w1` -> `w1@<host>` (a bare name is the name half,
    as `worker@host` is by default), `w1@%h` -> `w1@<host>`, `w1@box` as given; `%h`, `%n`,
    `%d` expand once, as in `celery worker -n` (celery.utils.nodenames)."""
    from celery.utils.nodenames import default_nodename, host_format

    return host_format(default_nodename(name if "@" in name else f"{name}@%h"))


def _use_env(urls: dict[str, str]) -> None:
    os.environ.update(urls)
    get_settings.cache_clear()


def _sigterm_as_interrupt() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


# ---------------------------------------------------------------------------------------------
# Running the parts


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic) at DATABASE_URL."""
    from llmq.store.migrate import upgrade

    upgrade(database_url(get_settings()))
    typer.echo("database is at the latest schema")


@app.command()
def api(
    host: Annotated[
        str | None, typer.Option(help="bind address", show_default=_setting("api_host"))
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="port", show_default=_setting("api_port"))
    ] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the HTTP API (needs DATABASE_URL and REDIS_URL)."""
    import uvicorn

    settings = get_settings()
    if not settings.database_url:
        # `llmq up` is what starts the embedded servers; the API alone only connects.
        raise _fail("llmq api needs DATABASE_URL (and REDIS_URL); `llmq up` runs it all on "
                    "embedded servers")  # fmt: skip
    uvicorn.run(
        "llmq.api.app:create_app",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
        log_level="warning",
        timeout_graceful_shutdown=30,
    )


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="queues, highest priority first")] = ",".join(QUEUES),
    concurrency: Annotated[
        int | None,
        typer.Option(
            help="concurrent jobs per process", show_default=_setting("worker_concurrency")
        ),
    ] = None,
    pool: Annotated[str, typer.Option(help="threads (recommended) | gevent | prefork")] = "",
    name: Annotated[
        str,
        typer.Option(
            "--name",
            "-n",
            help="node name: w1 or w1@%h -> w1@<host>, w1@box as given",
            show_default="celery@<host>",
        ),
    ] = "",
    loglevel: Annotated[str, typer.Option(help="log level (default LLMQ_LOG_LEVEL)")] = "",
    metrics_port: Annotated[
        int, typer.Option(help="serve /metrics here (default LLMQ_WORKER_METRICS_PORT; 0 = off)")
    ] = -1,
) -> None:
    """Run a Celery worker that processes jobs (needs DATABASE_URL and REDIS_URL)."""
    if metrics_port >= 0:
        _use_env({"LLMQ_WORKER_METRICS_PORT": str(metrics_port)})
    settings = get_settings()
    if not settings.database_url or not settings.redis_url:
        raise _fail("the worker needs DATABASE_URL and REDIS_URL")
    for queue in queues.split(","):
        if queue not in QUEUES:
            raise _fail(f"unknown queue {queue!r}; queues are {', '.join(QUEUES)}")
    pool = pool or settings.worker_pool
    argv = [
        "worker",
        "-Q",
        queues,
        "--pool",
        pool,
        "--concurrency",
        str(concurrency or settings.worker_concurrency),
        "--loglevel",
        loglevel or settings.log_level,
        "--without-mingle",
        "--without-gossip",
    ]
    if name:
        argv += ["--hostname", node_name(name)]
    if pool == "gevent":
        import importlib.util

        if importlib.util.find_spec("gevent") is None:
            raise _fail("--pool gevent needs gevent: pip install 'llmq[gevent]'")
        # gevent must patch sockets and locks before anything imports them; Celery's own entry
        # point does that first thing, this process is too late (its locks would block the hub).
        # A full gevent pool blocks intake by itself, so a prefetch of 2 x concurrency is never
        # reached and holds no extra messages; at 1 x, the Redis poll stops while every slot is
        # busy and only resumes after its 2 s timeout (jobs then run in bursts).
        argv += ["--prefetch-multiplier", "2"]
        celery = [sys.executable, "-m", "celery", "-A", "llmq.workers.celery_app"]
        os.execv(sys.executable, [*celery, *argv])
    import llmq.tasks.jobs  # noqa: F401  (registers the tasks)
    from llmq.workers.celery_app import app as celery_app

    celery_app.worker_main(argv)


@app.command()
def flower(
    port: Annotated[
        int | None, typer.Option(help="port", show_default=_setting("flower_port"))
    ] = None,
) -> None:
    """Run Flower (queue and worker dashboard) against the broker, with basic auth."""
    settings = get_settings()
    if not settings.redis_url:
        raise _fail("Flower needs REDIS_URL")
    if settings.flower_password is None:
        raise _fail("set LLMQ_FLOWER_PASSWORD: Flower is never served without auth")
    from llmq.workers.celery_app import app as celery_app

    auth = f"{settings.flower_user}:{settings.flower_password.get_secret_value()}"
    celery_app.start(
        [
            "flower",
            f"--port={port or settings.flower_port}",
            "--address=127.0.0.1",
            f"--basic-auth={auth}",
        ]
    )


@app.command("fake-provider")
def fake_provider(
    port: Annotated[int, typer.Option(help="port")] = 9000,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    latency_ms: Annotated[float | None, typer.Option(help="latency of every reply")] = None,
    script: Annotated[str | None, typer.Option(help="JSON fault script")] = None,
    batch_turnaround_s: Annotated[
        float | None, typer.Option(help="seconds an upstream Batch API batch takes to end")
    ] = None,
    rpm: Annotated[int | None, typer.Option(help="requests per minute per model", min=1)] = None,
    tpm: Annotated[int | None, typer.Option(help="tokens per minute per model", min=1)] = None,
    limit_window_s: Annotated[
        float, typer.Option(help="sliding window the limits are enforced over", min=0.1)
    ] = 60.0,
) -> None:
    """Serve a FAKE OpenAI/Anthropic-compatible provider for load tests and fault drills."""
    from llmq.testing.fake_limits import with_limits
    from llmq.testing.fake_provider import load_script, serve

    typer.echo(f"fake provider on http://{host}:{port} (OpenAI base_url http://{host}:{port}/v1)")
    limited = with_limits(load_script(script, latency_ms), rpm, tpm, limit_window_s)
    serve(host, port, limited, batch_turnaround_s)


@app.command()
def up(
    workers: Annotated[int, typer.Option(help="worker processes")] = 1,
    concurrency: Annotated[
        int | None,
        typer.Option(help="jobs per worker process", show_default=_setting("worker_concurrency")),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="API port", show_default=_setting("api_port"))
    ] = None,
    with_flower: Annotated[bool, typer.Option("--flower/--no-flower")] = False,
) -> None:
    """Run everything: embedded PostgreSQL and Redis (unless URLs are set), the schema, the API
    and N workers. Ctrl-C stops it all cleanly."""
    from llmq.localstack.processes import Stack
    from llmq.store.migrate import upgrade

    settings = get_settings()
    _sigterm_as_interrupt()
    with services(settings, settings.data_dir, durable=True) as urls:
        _use_env(urls)
        upgrade(urls["DATABASE_URL"])
        stack = Stack(env=urls, log_dir=settings.data_dir.resolve() / "logs")
        try:
            api_port = port or settings.api_port
            stack.start_api(settings.api_host, api_port)
            for index in range(workers):
                stack.start_worker(
                    f"w{index + 1}",
                    queues=",".join(QUEUES),
                    concurrency=concurrency or settings.worker_concurrency,
                    pool=settings.worker_pool,
                    # One exporter per process: consecutive ports from the configured one.
                    metrics_port=settings.worker_metrics_port + index
                    if settings.worker_metrics_port
                    else 0,
                )
            if with_flower:
                stack.start_flower(settings.flower_port)
            typer.echo(f"API      http://{settings.api_host}:{api_port}  (docs at /docs)")
            typer.echo(f"DATABASE_URL={urls['DATABASE_URL']}")
            typer.echo(f"REDIS_URL={urls['REDIS_URL']}")
            typer.echo(f"logs     {stack.log_dir}")
            typer.echo("create a key in another shell: llmq keys create --tenant me")
            while True:
                stack.check_alive()
                time.sleep(1)  # supervising children; Ctrl-C or a dead child ends the loop
        except KeyboardInterrupt:
            typer.echo("stopping ...", err=True)
        finally:
            stack.stop()


@app.command()
def demo(
    workers: Annotated[int, typer.Option(help="worker processes")] = 1,
    concurrency: Annotated[int, typer.Option(help="jobs per worker process")] = 16,
) -> None:
    """Summarize the shipped sample documents end to end on a throwaway embedded stack."""
    from llmq.cli.demo import run_demo

    _sigterm_as_interrupt()
    # A setup problem (e.g. no user for the embedded server) is a UserError: one line (main).
    raise typer.Exit(code=run_demo(workers=workers, concurrency=concurrency))


# ---------------------------------------------------------------------------------------------
# Keys


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="tenant name (created if new)")],
    admin: Annotated[bool, typer.Option(help="allow key management")] = False,
) -> None:
    """Create an API key. It is printed once, alone on the last line; only its hash is kept."""
    from llmq import store
    from llmq.store.engine import get_engine

    engine = get_engine(database_url(get_settings()))
    key = store.create_api_key(engine, tenant, admin=admin, actor="cli")
    typer.echo(f"created key for tenant {tenant!r}; store it now, it is not shown again:", err=True)
    typer.echo(key)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (prefix, tenant, created, revoked): never the keys themselves."""
    from llmq import store
    from llmq.store.engine import get_engine

    for row in store.list_api_keys(get_engine(database_url(get_settings()))):
        revoked = f" revoked {row['revoked_at']:%Y-%m-%d}" if row["revoked_at"] else ""
        typer.echo(
            f"{row['id']}  {row['prefix']}...  {row['tenant']}"
            f"{' admin' if row['is_admin'] else ''}{revoked}"
        )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="key id, or a prefix of the id or the key")],
) -> None:
    """Revoke a key by its id, or a prefix of the id or of the key (at least 8 characters, naming
    one active key). The last active admin key is never revoked."""
    from llmq import store
    from llmq.store.engine import get_engine

    revoked = store.revoke_api_key(get_engine(database_url(get_settings())), key_id, actor="cli")
    typer.echo(f"revoked key {revoked}")


@keys_app.command("new-encryption-key")
def keys_new_encryption_key() -> None:
    """Print a new Fernet key for LLMQ_ENCRYPTION_KEYS (put it first; keep the old ones after it
    until `llmq keys rotate-data` has run)."""
    from cryptography.fernet import Fernet

    typer.echo(Fernet.generate_key().decode())


@keys_app.command("rotate-data")
def keys_rotate_data(
    batch_rows: Annotated[int, typer.Option(min=1, help="rows per transaction")] = 500,
) -> None:
    """Re-encrypt every stored text (and cached/parked value in Redis) not yet under the newest
    key of LLMQ_ENCRYPTION_KEYS, a batch per short transaction while llmq keeps running. Safe
    to interrupt and re-run: it continues with what is left. Rows stored in clear before
    encryption was turned on are encrypted too."""
    from llmq.execution.paid import reseal_redis
    from llmq.resilience.redis_clients import redis_client
    from llmq.store.engine import get_engine
    from llmq.store.rotation import rotate_data

    settings = get_settings()
    if not settings.encryption_keys:
        raise _fail("LLMQ_ENCRYPTION_KEYS is not set: there is no key to rotate data to")
    report = rotate_data(get_engine(database_url(settings)), batch_rows=batch_rows)
    dropped, resealed = reseal_redis(redis_client(settings))
    rows = ", ".join(f"{table} {n}" for table, n in report.rows.items())
    typer.echo(
        f"re-encrypted rows: {rows} ({report.batches} batches); "
        f"redis: {dropped} stale cache entries dropped, {resealed} parked calls re-encrypted"
    )


# ---------------------------------------------------------------------------------------------
# Client commands (talk to the API over HTTP)


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="JSONL: one {custom_id?, input} per line")],
    api_key: ApiKey,
    api_url: ApiUrl = "http://127.0.0.1:8000",
    template: Annotated[str, typer.Option(help="template")] = "summarize",
    style: Annotated[str | None, typer.Option(help="summary style")] = None,
    priority: Annotated[str, typer.Option(help="high | default | low")] = "default",
    chain: Annotated[str | None, typer.Option(help="provider:model,... (fallback order)")] = None,
) -> None:
    """Submit a JSONL file as one batch; prints the batch id."""
    from llmq.client import Client

    items = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _fail(f"{file}:{number}: not valid JSON ({exc.msg})") from exc
        items.append(item if isinstance(item, dict) else {"input": str(item)})
    fields: dict[str, Any] = {"template": template, "priority": priority}
    if style:
        fields["params"] = {"style": style}
    if chain:
        fields["chain"] = chain.split(",")
    with Client(api_url, api_key) as client:
        accepted = client.submit_batch(items, **fields)
    typer.echo(accepted["id"])


@app.command()
def status(
    batch_id: Annotated[str, typer.Argument(help="batch id")],
    api_key: ApiKey,
    api_url: ApiUrl = "http://127.0.0.1:8000",
    wait: Annotated[bool, typer.Option("--wait", "--watch", help="follow until done")] = False,
) -> None:
    """Show a batch's counts; with --wait, a progress bar until it completes."""
    from llmq.cli.progress import follow_batch
    from llmq.client import Client

    with Client(api_url, api_key) as client:
        batch = follow_batch(client, batch_id) if wait else client.batch(batch_id)
    counts = " ".join(f"{k}={v}" for k, v in batch["counts"].items() if v)
    typer.echo(
        f"{batch['id']} {batch['status']} {batch['completed']}/{batch['item_count']} "
        f"{counts} tokens={batch['input_tokens'] + batch['output_tokens']} "
        f"cost=${batch['cost_usd']}"
    )


@app.command()
def results(
    batch_id: Annotated[str, typer.Argument(help="batch id")],
    api_key: ApiKey,
    api_url: ApiUrl = "http://127.0.0.1:8000",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write JSONL here")] = None,
    only: Annotated[
        str | None, typer.Option("--status", help="only these states, e.g. failed,expired")
    ] = None,
) -> None:
    """Download a batch's results as JSONL (stdout or -o FILE)."""
    from llmq.client import Client

    with Client(api_url, api_key) as client:
        sink = output.open("w") if output else sys.stdout
        try:
            for row in client.results(batch_id, only):
                sink.write(json.dumps(row) + "\n")
        finally:
            if output:
                sink.close()


@app.command()
def retry(
    batch_id: Annotated[str, typer.Argument(help="batch id")],
    api_key: ApiKey,
    api_url: ApiUrl = "http://127.0.0.1:8000",
) -> None:
    """Run a batch's failed and expired items again; prints how many."""
    from llmq.client import Client

    with Client(api_url, api_key) as client:
        typer.echo(f"retrying {client.retry(batch_id)['retried']} item(s)")


# ---------------------------------------------------------------------------------------------
# Operators: queues and jobs (direct database/broker access, not tenant-scoped)

jobs_app = typer.Typer(no_args_is_help=True, help="Retry or cancel jobs (operators).")
app.add_typer(jobs_app, name="jobs")


def _redis_url(settings: Settings) -> str:
    from llmq.localstack.embedded import running_services

    if settings.redis_url:
        return settings.redis_url
    recorded = running_services(settings.data_dir)
    if recorded:
        return recorded["REDIS_URL"]
    raise _fail("REDIS_URL is not set and no `llmq up` is running in this directory")


def _uuid(value: str) -> Any:
    import uuid

    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise _fail(f"not a job or batch id: {value!r}") from exc


@app.command()
def queues(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Messages waiting per queue (the autoscaling signal), and the live workers."""
    import redis

    from llmq.resilience.adaptive import learned_views
    from llmq.workers.heartbeat import live_workers
    from llmq.workers.queues import queue_depths

    client = redis.Redis.from_url(_redis_url(get_settings()), socket_timeout=5)
    try:
        depths = queue_depths(client)
        workers = live_workers(client)
        limits = learned_views(client)
    except redis.RedisError as exc:
        raise _fail(f"Redis is unreachable: {type(exc).__name__}") from exc
    if as_json:
        rate_limits = [view.as_dict() for view in limits]
        typer.echo(json.dumps({"queues": depths, "workers": workers, "rate_limits": rate_limits}))
        return
    for queue, depth in depths.items():
        typer.echo(f"{queue:<12} {depth}")
    names = ", ".join(str(w["name"]) for w in workers) or "none"
    typer.echo(f"workers      {len(workers)} live: {names}")
    for view in limits:
        typer.echo(f"rate limit   {view.describe()}")


@jobs_app.command("retry")
def jobs_retry(job_id: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Run a failed, expired, blocked or cancelled job again from the start (earlier cost is
    kept)."""
    from llmq import store
    from llmq.store.engine import get_engine

    settings = get_settings()
    engine = get_engine(database_url(settings))
    target = _uuid(job_id)
    owner = store.get_job_owner(engine, target)
    if owner is None:
        raise _fail(f"no failed, expired, blocked or cancelled job {job_id}")
    # Recorded before the action (the action is its own transaction): an admin action is never
    # taken without its audit row; at worst a row names one that then found nothing to do.
    store.record_event(engine, store.AuditEvent("cli", "admin.job_retried", owner, str(target)))
    taken = store.retry_job(engine, target)
    if taken is None:
        raise _fail(f"no failed, expired, blocked or cancelled job {job_id}")
    _use_env({"REDIS_URL": _redis_url(settings)})
    from llmq.workers.dispatch import publish_jobs

    try:
        publish_jobs([taken])
        typer.echo(f"job {job_id} queued again")
    except Exception as exc:  # a dead broker: the reconciler publishes it instead
        store.undo_dispatch(engine, [taken[0]])
        typer.echo(f"job {job_id} queued again; the broker is down ({type(exc).__name__}), "
                   "a worker's reconciler will publish it")  # fmt: skip


@jobs_app.command("cancel")
def jobs_cancel(item_id: Annotated[str, typer.Argument(help="job id or batch id")]) -> None:
    """Cancel a job, or every unfinished job of a batch. Waiting jobs end now; running ones
    stop at their next step."""
    from llmq import store
    from llmq.store.engine import get_engine

    engine = get_engine(database_url(get_settings()))
    target = _uuid(item_id)
    scope, owner = "job", store.get_job_owner(engine, target)
    if owner is None:
        scope, owner = "batch", store.get_batch_owner(engine, target)
    if owner is None:
        raise _fail(f"no job or batch {item_id}")
    # Recorded before the action, as for `jobs retry`.
    store.record_event(
        engine,
        store.AuditEvent("cli", "admin.job_cancelled", owner, str(target), {"scope": scope}),
    )
    if scope == "job":
        done = store.cancel_jobs(engine, owner, job_id=target)
    else:
        done = store.cancel_jobs(engine, owner, batch_id=target)
    if done is None:
        raise _fail(f"no job or batch {item_id}")
    typer.echo(f"cancelled {done.cancelled}, stopping {done.stopping} running")


# Cost and budgets: `llmq usage`, `llmq budgets set|list` (llmq/cli/cost.py).
def _add_cost_commands() -> None:
    from llmq.cli.cost import budgets_app, usage

    app.add_typer(budgets_app, name="budgets")
    app.command()(usage)


_add_cost_commands()


# Shadow runs: `llmq evals --template NAME` (llmq/cli/evals.py).
def _add_evals_commands() -> None:
    from llmq.cli.evals import evals

    app.command()(evals)


_add_evals_commands()


def _add_config_commands() -> None:
    from llmq.cli.config import config_app

    app.add_typer(config_app, name="config")


_add_config_commands()


# The audit log: `llmq audit [list]`, `llmq audit verify` (llmq/cli/audit.py).
def _add_audit_commands() -> None:
    from llmq.cli.audit import audit_app

    app.add_typer(audit_app, name="audit")


_add_audit_commands()


# The semantic cache: `llmq semantic-cache status|clear` (llmq/cli/semantic_cache.py).
def _add_semantic_cache_commands() -> None:
    from llmq.cli.semantic_cache import semantic_app

    app.add_typer(semantic_app, name="semantic-cache")


_add_semantic_cache_commands()


def main() -> None:
    """Every command's expected failures (a setting missing, the API or database unreachable,
    a refused request) end here: one line on stderr and exit 1, never a traceback."""
    try:
        app()
    except (ValidationError, ConfigFileError) as exc:  # any command's settings, as they load
        from llmq.config_check import describe

        typer.secho("\n".join(describe(exc)), fg=typer.colors.RED, err=True)
        sys.exit(1)
    except UserError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        sys.exit(1)
    except Exception as exc:
        if (unreachable := _database_unreachable(exc)) is None:
            raise
        typer.secho(unreachable, fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
