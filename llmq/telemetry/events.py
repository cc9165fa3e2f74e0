"""Live progress: workers publish a notification on every job state change (Redis pub/sub);
streams wake on it and read the state from Postgres. The notification carries no state, so a
lost one (Redis restart, a subscriber that was not yet listening) only delays an update until
the next periodic snapshot; the stream never shows anything Postgres does not hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aredis

log = logging.getLogger(__name__)

PREFIX = "llmq:events:"


def job_channel(job_id: object) -> str:
    return f"{PREFIX}job:{job_id}"


def batch_channel(batch_id: object) -> str:
    return f"{PREFIX}batch:{batch_id}"


class EventPublisher:
    """Fire-and-forget notifications: failing to publish never fails the job.

    Immediate by default (the API: a cancel wakes its streams at once). With `coalesce_s` (the
    workers) channels are collected and published together every `coalesce_s` by a background
    thread: a busy worker changes hundreds of jobs a second, readers only need to know that a
    channel changed (they read Postgres, after a debounce of their own), and one pipelined
    round trip per interval replaces two per job. Call `close()` to send what is pending."""

    def __init__(self, client: redis.Redis, coalesce_s: float | None = None) -> None:
        self._client = client
        self._coalesce_s = coalesce_s
        self._pending: dict[str, str] = {}  # channel -> message, insertion ordered
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._flusher: threading.Thread | None = None

    def job_changed(self, job_id: object, batch_id: object | None, status: str) -> None:
        message = json.dumps({"job_id": str(job_id), "status": status})
        channels = [job_channel(job_id)]
        if batch_id is not None:
            channels.append(batch_channel(batch_id))
        self._send({channel: message for channel in channels})

    def batches_changed(self, batch_ids: Iterable[str]) -> None:
        self._send(
            {batch_channel(batch_id): json.dumps({"batch_id": batch_id}) for batch_id in batch_ids}
        )

    def close(self) -> None:
        """Publish what is pending and stop the background thread; later changes are published
        at once."""
        with self._lock:
            self._closed = True
        self._wake.set()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        self._flush()

    def _send(self, messages: dict[str, str]) -> None:
        with self._lock:  # closed is read under the lock: nothing is held back after close()
            held = self._coalesce_s is not None and not self._closed
            if held:
                self._pending.update(messages)
                if self._flusher is None:
                    self._flusher = threading.Thread(
                        target=self._run, name="llmq-events", daemon=True
                    )
                    self._flusher.start()
        if not held:
            self._publish(messages)

    def _run(self) -> None:
        assert self._coalesce_s is not None
        while not self._closed:
            self._wake.wait(self._coalesce_s)
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if pending:
            self._publish(pending)

    def _publish(self, messages: dict[str, str]) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            for channel, message in messages.items():
                pipe.publish(channel, message)
            pipe.execute()
        except redis.RedisError as exc:
            log.debug("event not published (%s); streams fall back to snapshots", exc)


# ---------------------------------------------------------------------------------------------
# Server side: a stream of distinct states


async def watch_states(
    redis_url: str,
    channel: str,
    read_state: Callable[[], Awaitable[dict[str, Any] | None]],
    is_final: Callable[[dict[str, Any]], bool],
    *,
    snapshot_interval_s: float,
    keepalive_s: float,
    debounce_s: float = 0.1,
) -> AsyncIterator[dict[str, Any] | None]:
    """Yield every distinct state until a final one (None: nothing new for `keepalive_s`).

    Subscribes before the first read, so a change between the read and the subscription
    cannot be missed; bursts of notifications are coalesced into one read per `debounce_s`.
    """
    client = aredis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=None)
    pubsub: Any = client.pubsub(ignore_subscribe_messages=True)
    try:
        try:
            await pubsub.subscribe(channel)
        except (redis.RedisError, OSError) as exc:
            log.warning("events: no pub/sub (%s); Postgres snapshots only", exc)
            pubsub = None
        loop = asyncio.get_running_loop()
        last: dict[str, Any] | None = None
        quiet_since = loop.time()
        while True:
            state = await read_state()
            if state is None:
                return
            if state != last:
                last = state
                quiet_since = loop.time()
                yield state
                if is_final(state):
                    return
            elif loop.time() - quiet_since >= keepalive_s:
                quiet_since = loop.time()
                yield None
            await _next_wakeup(pubsub, snapshot_interval_s, debounce_s)
    finally:
        if pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                await pubsub.aclose()
        await client.aclose()  # type: ignore[attr-defined]  # stubs predate redis 5


async def _next_wakeup(pubsub: Any, timeout_s: float, debounce_s: float) -> None:
    """Return on a notification (after draining the burst) or after `timeout_s`."""
    if pubsub is None:
        await asyncio.sleep(timeout_s)
        return
    try:
        message = await pubsub.get_message(timeout=timeout_s)
        if message is None:
            return
        await asyncio.sleep(debounce_s)  # coalesce: one Postgres read per burst
        while await pubsub.get_message(timeout=0.0) is not None:
            pass
    except (redis.RedisError, OSError) as exc:
        log.warning("events: pub/sub lost (%s); snapshot in %.1f s", exc, timeout_s)
        await asyncio.sleep(timeout_s)


def format_sse(event_id: int, event: str, data: dict[str, Any]) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, default=str)}\n\n"


KEEPALIVE = ": keepalive\n\n"


# ---------------------------------------------------------------------------------------------
# Client side: parse a text/event-stream


@dataclass(frozen=True)
class ServerEvent:
    id: str | None
    event: str
    data: Any


def parse_sse(lines: Iterable[str]) -> Iterator[ServerEvent]:
    """Events from the lines of a text/event-stream (comments and keep-alives skipped)."""
    event_id: str | None = None
    name = "message"
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield ServerEvent(event_id, name, json.loads("\n".join(data)))
            event_id, name, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id":
            event_id = value
        elif field == "event":
            name = value
        elif field == "data":
            data.append(value)
