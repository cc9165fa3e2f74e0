"""`llmq usage` and `llmq budgets ...`: cost rollups over HTTP, budgets in the database."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal, InvalidOperation
from typing import Annotated

import typer
from sqlalchemy import Engine

from llmq.localstack.services import database_url
from llmq.settings import get_settings

budgets_app = typer.Typer(no_args_is_help=True, help="Tenant spending limits (USD, UTC periods).")

ApiUrl = Annotated[str, typer.Option(envvar="LLMQ_API_URL", help="llmq API base URL")]
ApiKey = Annotated[str, typer.Option(envvar="LLMQ_API_KEY", help="API key (llmq keys create)")]


def _fail(message: str) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


def _usd(value: str | None, what: str) -> Decimal | None:
    if value is None or value.lower() == "none":
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise _fail(f"--{what} must be an amount in USD, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise _fail(f"--{what} must be a positive amount in USD, got {value!r}")
    return amount


def _engine() -> Engine:
    from llmq.store.engine import get_engine

    return get_engine(database_url(get_settings()))


@budgets_app.command("set")
def budgets_set(
    tenant: Annotated[str, typer.Option(help="tenant name")],
    daily: Annotated[str | None, typer.Option(help="USD per UTC day ('none' to clear)")] = None,
    monthly: Annotated[
        str | None, typer.Option(help="USD per UTC calendar month ('none' to clear)")
    ] = None,
) -> None:
    """Set a tenant's daily and/or monthly limit (a limit not given keeps its value)."""
    from llmq import store

    engine = _engine()
    current = store.get_budget(engine, _tenant_id(engine, tenant))
    new_daily = _usd(daily, "daily") if daily is not None else None
    new_monthly = _usd(monthly, "monthly") if monthly is not None else None
    if current is not None:  # a limit not given keeps its value
        new_daily = new_daily if daily is not None else current.daily_usd
        new_monthly = new_monthly if monthly is not None else current.monthly_usd
    store.set_budget(engine, tenant, new_daily, new_monthly, actor="cli")
    typer.echo(f"{tenant}: daily={_show(new_daily)} monthly={_show(new_monthly)}")


@budgets_app.command("list")
def budgets_list() -> None:
    """Every tenant with a budget."""
    from llmq import store

    for row in store.list_budgets(_engine()):
        typer.echo(
            f"{row['tenant']}  daily={_show(row['daily_usd'])}  monthly={_show(row['monthly_usd'])}"
        )


def _tenant_id(engine: Engine, name: str) -> uuid.UUID:
    from llmq import store

    tenant_id = store.tenant_id_by_name(engine, name)
    if tenant_id is None:
        raise _fail(f"no tenant named {name!r} (create one with `llmq keys create`)")
    return tenant_id


def _show(value: Decimal | None) -> str:
    return "none" if value is None else f"${value.normalize():f}"


def usage(
    api_key: ApiKey,
    api_url: ApiUrl = "http://127.0.0.1:8000",
    from_: Annotated[
        str | None, typer.Option("--from", help="start, ISO 8601 (default: month start)")
    ] = None,
    to: Annotated[str | None, typer.Option(help="end, ISO 8601 (default: now)")] = None,
    group_by: Annotated[str, typer.Option(help="model | day | batch | key")] = "model",
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON")] = False,
) -> None:
    """Cost and tokens of your provider calls, per model, day, batch or API key."""
    from llmq.client import Client

    params = {"group_by": group_by, "from": from_, "to": to}
    with Client(api_url, api_key) as client:
        report = client.usage(**{k: v for k, v in params.items() if v is not None})
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"usage from {report['from']} to {report['to']} by {group_by}")
    header = f"{group_by:<40} {'attempts':>8} {'in tok':>10} {'out tok':>10} {'cost USD':>16}"
    typer.echo(header)
    for row in [*report["rows"], {**report["total"], "group": "TOTAL"}]:
        name = row.get("label") or row["group"] or "-"
        typer.echo(
            f"{name:<40} {row['attempts']:>8} {row['input_tokens']:>10} "
            f"{row['output_tokens']:>10} {row['cost_usd']:>16}"
            + (f"  ({row['unpriced_attempts']} unpriced)" if row["unpriced_attempts"] else "")
        )
