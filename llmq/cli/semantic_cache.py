"""`llmq semantic-cache status` (is it usable here, how many entries) and `llmq semantic-cache
clear` (all entries, one tenant's, or only the expired). Operators' commands: they read the
database directly, like `llmq keys`."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy import Engine

from llmq.localstack.services import database_url
from llmq.settings import get_settings

semantic_app = typer.Typer(no_args_is_help=True, help="The semantic cache (pgvector).")


def _engine() -> Engine:
    from llmq.store.engine import get_engine

    return get_engine(database_url(get_settings()))


@semantic_app.command("status")
def status() -> None:
    """Whether the semantic cache is on, and if not why; its entries."""
    from llmq.store import semantic_cache as entries

    settings = get_settings()
    engine = _engine()
    reason = entries.unavailable(engine)
    if not settings.semantic_cache:
        reason = reason or "LLMQ_SEMANTIC_CACHE is false"
    typer.echo(f"semantic cache: {'off (' + reason + ')' if reason else 'on'}")
    typer.echo(f"embedding model: {settings.semantic_cache_embedding}")
    typer.echo(f"default threshold: {settings.semantic_cache_threshold}")
    if entries.unavailable(engine) is None:
        found = entries.stats(engine)
        newest = found["newest"].isoformat() if found["newest"] else "-"
        typer.echo(
            f"entries: {found['entries']} ({found['expired']} expired), "
            f"scopes: {found['scopes']}, newest: {newest}"
        )


@semantic_app.command("clear")
def clear(
    tenant: Annotated[str | None, typer.Option(help="only this tenant's entries")] = None,
    expired: Annotated[bool, typer.Option("--expired", help="only expired entries")] = False,
) -> None:
    """Delete entries: every one, one tenant's (--tenant NAME), or the expired (--expired)."""
    from llmq import store
    from llmq.store import semantic_cache as entries

    engine = _engine()
    reason = entries.unavailable(engine)
    if reason is not None:
        typer.secho(f"semantic cache unavailable: {reason}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)
    scope = None
    if tenant is not None:
        tenant_id = store.tenant_id_by_name(engine, tenant)
        if tenant_id is None:
            typer.secho(f"no tenant named {tenant!r}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=1)
        scope = str(tenant_id)
    deleted = entries.clear(engine, scope=scope, expired_only=expired)
    typer.echo(f"deleted {deleted} entries")
