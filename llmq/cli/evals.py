"""`llmq evals --template summarize`: the evaluation log of shadow runs (GET /v1/evals) as a
table, CSV or JSON, and optionally the score-vs-cost chart as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from llmq.cli.cost import ApiKey, ApiUrl

Format = Literal["table", "csv", "json"]


def evals(
    api_key: ApiKey,
    template: Annotated[str, typer.Option(help="template name, e.g. summarize")],
    api_url: ApiUrl = "http://127.0.0.1:8000",
    since: Annotated[str | None, typer.Option(help="only rows since, ISO 8601")] = None,
    format_: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
    chart: Annotated[
        Path | None, typer.Option(help="also write the score-vs-cost chart to this PNG")
    ] = None,
    score: Annotated[str, typer.Option(help="the score the chart plots")] = "numbers_kept",
) -> None:
    """Per variant: n, failure rate, cost per 1k jobs, p50/p95 latency, each score's mean and
    p50, and its paired difference to the primary with a 95% confidence interval."""
    from llmq.client import Client
    from llmq.evals import report

    if format_ not in ("table", "csv", "json"):
        raise typer.BadParameter("must be table, csv or json", param_hint="--format")
    params = {"template": template, **({"since": since} if since else {})}
    with Client(api_url, api_key) as client:
        data = client.evals(**params)
    reports = report.from_json(data["variants"])
    if format_ == "json":
        typer.echo(report.to_json_text(reports))
    elif format_ == "csv":
        typer.echo(report.to_csv(reports), nl=False)
    else:
        typer.echo(f"{template}: {data['rows']} evaluation rows")
        typer.echo(report.to_table(reports))
    if chart is not None:
        from llmq.evals.chart import write_chart

        drawn = write_chart(reports, chart, score)
        typer.echo(f"chart of {drawn} variants written to {chart}", err=True)
