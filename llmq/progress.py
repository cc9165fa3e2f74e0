"""Follow a batch to completion with a progress bar (a TTY) or progress lines (logs, CI)."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llmq.client import Client

POLL_S = 0.5


def _counts(batch: dict[str, Any]) -> str:
    c = batch["counts"]
    return (
        f"succeeded {c['succeeded']}, failed {c['failed']}, blocked {c['blocked']}, "
        f"running {c['running'] + c.get('waiting', 0)}, queued {c['queued'] + c['retrying']}"
    )


def follow_batch(client: Client, batch_id: str, timeout_s: float = 3600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    batch = client.batch(batch_id)
    if sys.stderr.isatty():
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[counts]}"),
            transient=False,
        ) as bar:
            task = bar.add_task("summarizing", total=batch["item_count"], counts="")
            while True:
                bar.update(task, completed=batch["completed"], counts=_counts(batch))
                if batch["status"] == "completed" or time.monotonic() > deadline:
                    return batch
                time.sleep(POLL_S)  # polling the API is the client's only signal here
                batch = client.batch(batch_id)
    last = -1
    while True:
        if batch["completed"] != last:
            last = batch["completed"]
            print(
                f"progress: {batch['completed']}/{batch['item_count']} done ({_counts(batch)})",
                file=sys.stderr,
                flush=True,
            )
        if batch["status"] == "completed" or time.monotonic() > deadline:
            return batch
        time.sleep(POLL_S)  # polling the API is the client's only signal here
        batch = client.batch(batch_id)
