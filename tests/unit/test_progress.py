"""`llmq status --wait` (and the demo) follow a batch through a brief API outage: a 503 while
Postgres restarts, or no answer from an API that answered before, is waited out; an API never
reached (a wrong URL) and any other refusal end the wait at once."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from llmq.cli.progress import follow_batch
from llmq.client import ApiRequestError, ApiUnreachable
from llmq.telemetry.events import ServerEvent

DONE = {"status": "completed", "item_count": 2, "completed": 2,
        "counts": {"succeeded": 2, "failed": 0, "blocked": 0, "running": 0, "queued": 0,
                   "retrying": 0}}  # fmt: skip
RUNNING = {**DONE, "status": "in_progress", "completed": 1}


class FlakyApi:
    """Answers each call with the next scripted reply (an exception is raised)."""

    def __init__(self, batches: list[Any], streams: list[Any]) -> None:
        self.batches, self.streams = batches, streams

    def batch(self, batch_id: str) -> dict[str, Any]:
        reply = self.batches.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return dict(reply)

    def events(self, path: str, last_id: str | None = None) -> Any:
        reply = self.streams.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return iter(reply)


def unavailable() -> ApiRequestError:
    return ApiRequestError(503, {"error": {"message": "the database is unavailable"}})


def test_a_503_and_a_refused_connection_are_waited_out() -> None:
    refused = ApiUnreachable("http://api", httpx.ConnectError("refused"))
    api = FlakyApi(
        batches=[unavailable(), unavailable(), RUNNING, refused, DONE],
        streams=[refused, unavailable(), [ServerEvent("7", "completed", DONE)]],
    )
    pauses: list[float] = []
    assert follow_batch(api, "b", sleep=pauses.append)["completed"] == 2  # type: ignore[arg-type]
    # two growing pauses for the first state, one per reconnect, one for the final state
    assert pauses == [0.5, 1.0, 1.0, 1.0, 0.5]


def test_an_api_never_reached_is_reported_at_once() -> None:
    refused = ApiUnreachable("http://wrong-host:8000", httpx.ConnectError("refused"))
    api = FlakyApi(batches=[refused], streams=[])
    with pytest.raises(ApiUnreachable, match="wrong-host"):
        follow_batch(api, "b", sleep=lambda _: None)  # type: ignore[arg-type]


def test_a_refusal_that_is_not_an_outage_ends_the_wait() -> None:
    api = FlakyApi(batches=[ApiRequestError(404, {"error": {"message": "not found"}})], streams=[])
    with pytest.raises(ApiRequestError, match="404"):
        follow_batch(api, "b", sleep=lambda _: None)  # type: ignore[arg-type]
