"""`llmq audit` (list the audit log, newest first) and `llmq audit verify` (walk its hash
chain). Operators' commands: they read the database directly, like `llmq keys`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer
from sqlalchemy import Engine

from llmq.localstack.services import database_url
from llmq.settings import get_settings

audit_app = typer.Typer(help="The audit log of security events.", invoke_without_command=True)


def _fail(message: str) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


def _engine() -> Engine:
    from llmq.store.engine import get_engine

    return get_engine(database_url(get_settings()))


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _fail(f"--since must be an ISO 8601 time, got {value!r}") from None
    if parsed.tzinfo is None:
        raise _fail(f"--since needs a time zone (e.g. {value}Z or {value}+00:00)")
    return parsed


def _row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **row,
        "at": row["at"].isoformat(),
        "tenant_id": row["tenant_id"] and str(row["tenant_id"]),
    }


@audit_app.callback()
def audit_list(
    ctx: typer.Context,
    action: Annotated[str | None, typer.Option(help="exact action, or a family: admin.*")] = None,
    tenant: Annotated[str | None, typer.Option(help="tenant name")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 time with a zone")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line")] = False,
) -> None:
    """List audit events, newest first (see `llmq audit verify` to check the chain)."""
    if ctx.invoked_subcommand is not None:
        return
    from llmq import store

    engine = _engine()
    tenant_id = None
    if tenant is not None:
        tenant_id = store.tenant_id_by_name(engine, tenant)
        if tenant_id is None:
            raise _fail(f"no tenant named {tenant!r}")
    rows = store.list_events(
        engine, action=action, tenant_id=tenant_id, since=_since(since), limit=limit
    )
    for row in map(_row, rows):
        if as_json:
            typer.echo(json.dumps({k: v for k, v in row.items() if k != "prev_hash"}))
        else:
            details = json.dumps(row["details"], sort_keys=True) if row["details"] else ""
            typer.echo(
                f"{row['id']:>7}  {row['at']}  {row['action']:<24} actor={row['actor']}  "
                f"tenant={row['tenant_id'] or '-'}  target={row['target'] or '-'}  {details}"
            )


@audit_app.command("verify")
def audit_verify(
    batch_size: Annotated[int, typer.Option(min=1, help="rows read per query")] = 1000,
) -> None:
    """Walk the hash chain: exit 0 with 'N rows, chain intact', or exit 1 naming the first
    row that was edited, deleted after or reordered."""
    from llmq import store

    report = store.verify_chain(_engine(), batch_size=batch_size)
    if report.broken_id is not None:
        raise _fail(f"audit chain broken at {report.reason} ({report.rows} rows intact before it)")
    typer.echo(f"{report.rows} rows, chain intact (head {report.head_hash})")
