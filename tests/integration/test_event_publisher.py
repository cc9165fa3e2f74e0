"""Job-change notifications on real Redis pub/sub: immediate for the API, coalesced per channel
for workers (one notification per changed channel per interval, none lost at close)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from llmq.telemetry.events import EventPublisher, batch_channel, job_channel

from ..helpers import wait_for


@pytest.fixture()
def client(services: Any) -> redis.Redis:
    return redis.Redis.from_url(services.redis_url, socket_timeout=5)


@pytest.fixture()
def listener(client: redis.Redis) -> Iterator[Any]:
    pubsub = client.pubsub()
    yield pubsub
    pubsub.close()


def subscribe(pubsub: Any, *channels: str) -> None:
    """Subscribe and wait for Redis to confirm every channel, so no publish can precede it."""
    pubsub.subscribe(*channels)
    confirmed = 0
    while confirmed < len(channels):
        message = pubsub.get_message(timeout=5)
        assert message is not None, "Redis did not confirm the subscription"
        confirmed += message["type"] == "subscribe"


def received(pubsub: Any) -> list[str]:
    """Channels of every message that has arrived so far."""
    channels = []
    while (message := pubsub.get_message(timeout=0.2)) is not None:
        channels.append(message["channel"].decode())
    return channels


def test_the_api_publisher_notifies_at_once(client: redis.Redis, listener: Any) -> None:
    batch, jobs = uuid.uuid4(), [uuid.uuid4(), uuid.uuid4()]
    subscribe(listener, batch_channel(batch))
    publisher = EventPublisher(client)
    for job in jobs:
        publisher.job_changed(job, batch, "running")
    # Nothing was closed or flushed: both notifications are already on the channel.
    assert received(listener) == [batch_channel(batch)] * 2


def test_a_worker_publisher_sends_each_changed_channel_once_per_interval(
    client: redis.Redis, listener: Any
) -> None:
    batch, jobs = uuid.uuid4(), [uuid.uuid4() for _ in range(50)]
    subscribe(listener, batch_channel(batch), *(job_channel(job) for job in jobs))
    # An interval longer than the test: only close() sends, so the count is exact.
    publisher = EventPublisher(client, coalesce_s=60)
    for job in jobs:
        publisher.job_changed(job, batch, "running")
        publisher.job_changed(job, batch, "succeeded")
    assert received(listener) == []  # held back, not sent per change
    publisher.close()
    channels = received(listener)
    assert channels.count(batch_channel(batch)) == 1  # 100 changes, one notification
    assert sorted(c for c in channels if c != batch_channel(batch)) == sorted(
        job_channel(job) for job in jobs
    )
    publisher.job_changed(jobs[0], None, "succeeded")  # closed: straight through
    assert received(listener) == [job_channel(jobs[0])]


def test_the_background_thread_flushes_without_close(client: redis.Redis, listener: Any) -> None:
    job = uuid.uuid4()
    subscribe(listener, job_channel(job))
    publisher = EventPublisher(client, coalesce_s=0.05)
    try:
        publisher.job_changed(job, None, "running")
        message = wait_for(
            lambda: listener.get_message(timeout=0.2), timeout=10, what="the flushed notification"
        )
        assert message["channel"].decode() == job_channel(job)
    finally:
        publisher.close()


def test_an_unreachable_redis_never_fails_the_caller() -> None:
    dead = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    for publisher in (EventPublisher(dead), EventPublisher(dead, coalesce_s=0.01)):
        publisher.job_changed(uuid.uuid4(), uuid.uuid4(), "running")
        publisher.batches_changed([str(uuid.uuid4())])
        publisher.close()  # flushes into the void, logs, returns
