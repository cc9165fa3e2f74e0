"""Follow a batch to completion with a progress bar (a TTY) or progress lines (logs, CI).

Progress comes from the batch's Server-Sent Events stream: no polling; a dropped connection
is resumed with Last-Event-ID. A follower is a long-lived watcher: an API that is briefly
unreachable or answers 503 (its database restarting) is waited out, not reported as the end."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from llmq.client import ApiRequestError, ApiUnreachable, Client, ClientError

RECONNECTS = 5
Sleep = Callable[[float], None]


def _transient(exc: ClientError, reached: bool) -> bool:
    """Worth waiting out: the API's 503 (its Postgres or Redis away), or no answer at all from
    an API that did answer before (an API never reached is a wrong URL: say so at once)."""
    if isinstance(exc, ApiUnreachable):
        return reached
    return isinstance(exc, ApiRequestError) and exc.status == 503


def _batch(
    client: Client, batch_id: str, deadline: float, sleep: Sleep, reached: bool
) -> dict[str, Any]:
    """The batch's state, retried with a growing pause while the API is briefly unavailable."""
    pause = 0.5
    while True:
        try:
            return client.batch(batch_id)
        except ClientError as exc:
            if not _transient(exc, reached) or time.monotonic() + pause > deadline:
                raise
        sleep(pause)
        pause = min(pause * 2, 5.0)


def _counts(state: dict[str, Any]) -> str:
    c = state["counts"]
    parts = [
        f"succeeded {c['succeeded']}",
        f"failed {c['failed']}",
        f"blocked {c['blocked']}",
        f"running {c['running'] + c.get('waiting', 0)}",
        f"queued {c['queued'] + c['retrying']}",
    ]
    parts += [f"{name} {c[name]}" for name in ("cancelled", "expired") if c.get(name)]
    return ", ".join(parts)


class Rate:
    """Items per second since we started watching, and the time left at that pace."""

    def __init__(self, start_completed: int) -> None:
        self._start = time.monotonic()
        self._start_completed = start_completed

    def per_s(self, completed: int) -> float:
        elapsed = time.monotonic() - self._start
        return (completed - self._start_completed) / elapsed if elapsed > 0 else 0.0

    def eta_s(self, completed: int, total: int) -> float | None:
        rate = self.per_s(completed)
        return (total - completed) / rate if rate > 0 else None


def _states(client: Client, batch_id: str, sleep: Sleep) -> Iterator[dict[str, Any]]:
    """Batch states from the event stream until `completed`, reconnecting if it drops."""
    last_id: str | None = None
    for _ in range(RECONNECTS):
        try:
            for event in client.events(f"/v1/batches/{batch_id}/events", last_id):
                last_id = event.id
                yield event.data
                if event.event in ("completed", "cancelled"):
                    return
        except ClientError as exc:  # the stream dropped or was refused: resume from the last event
            if not _transient(exc, reached=True):
                raise
            sleep(1.0)
            continue
        return


def follow_batch(
    client: Client, batch_id: str, timeout_s: float = 3600, sleep: Sleep = time.sleep
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    batch = _batch(client, batch_id, deadline, sleep, reached=False)
    rate = Rate(batch["completed"])
    if batch["status"] == "completed":
        _print_line(batch, rate)
        return batch
    if sys.stderr.isatty():
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[counts]}"),
            transient=False,
        ) as bar:
            task = bar.add_task("summarizing", total=batch["item_count"], counts="", rate="")
            for state in _states(client, batch_id, sleep):
                per_s = rate.per_s(state["completed"])
                bar.update(
                    task, completed=state["completed"], counts=_counts(state),
                    rate=f"{per_s:.1f}/s",
                )  # fmt: skip
                if time.monotonic() > deadline:
                    break
        return _batch(client, batch_id, deadline, sleep, reached=True)
    last = -1
    for state in _states(client, batch_id, sleep):
        if state["completed"] != last:
            last = state["completed"]
            _print_line(state, rate)
        if time.monotonic() > deadline:
            break
    return _batch(client, batch_id, deadline, sleep, reached=True)


def _print_line(state: dict[str, Any], rate: Rate) -> None:
    eta = rate.eta_s(state["completed"], state["item_count"])
    print(
        f"progress: {state['completed']}/{state['item_count']} done "
        f"({_counts(state)}) {rate.per_s(state['completed']):.1f}/s "
        f"eta {'-' if eta is None else f'{eta:.0f}s'}",
        file=sys.stderr,
        flush=True,
    )
