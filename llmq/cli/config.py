"""`llmq config check`: validate the configuration and show what a process would run with."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmq.settings import CONFIG_FILE_VAR, config_file

config_app = typer.Typer(no_args_is_help=True, help="Check the configuration.")


@config_app.command("check")
def check(
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="TOML file to check instead of the usual one",
            show_default=f"{CONFIG_FILE_VAR}, else ./llmq.toml if it exists",
        ),
    ] = None,
) -> None:
    """Validate the environment, .env and TOML settings; print the effective settings with
    secrets masked, or every problem (one per line) and exit 1."""
    from llmq.config_check import load_settings, render

    settings = load_settings(file)  # ConfigError: main() prints its lines and exits 1
    source = file or config_file()
    typer.echo(f"# configuration file: {source if source else 'none'}")
    typer.echo(render(settings))
    typer.echo("# configuration is valid")
