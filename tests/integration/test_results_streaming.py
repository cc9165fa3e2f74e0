"""Results of a 50,000-item batch stream in pages: memory stays bounded by a page, not the
batch, and a status filter streams the same way."""

from __future__ import annotations

import tracemalloc
import uuid
from collections.abc import Iterator

from sqlalchemy import Engine

from llmq import store
from llmq.store.engine import get_engine

ITEMS = 50_000


def _lines(engine: Engine, batch_id: uuid.UUID, statuses: list[str] | None = None) -> Iterator[str]:
    """What GET /v1/batches/{id}/results yields, line by line."""
    from llmq.api.routes.batches import _result_line  # not at collection: it binds the broker

    for row in store.iter_batch_results(engine, batch_id, statuses=statuses):
        yield _result_line(row)


def test_fifty_thousand_results_stream_in_bounded_memory(isolated_env: dict[str, str]) -> None:
    # Isolated database and broker, no worker: the jobs stay queued while we read them.
    engine = get_engine(isolated_env["DATABASE_URL"])
    principal = store.authenticate(engine, store.create_api_key(engine, "big"))
    assert principal is not None
    batch_id = store.insert_batch(
        engine, tenant_id=principal.tenant_id, template="summarize", template_version=1,
        priority="low", chain=["local:extractive"], meta={},
        items=[store.NewJob(input=f"doc {i}", custom_id=f"item-{i:05d}")
               for i in range(ITEMS)],
    )  # fmt: skip

    # Import the route module and run the query path once before measuring: run alone, this
    # test would otherwise count the imports (~60 MB) as streaming memory.
    next(iter(_lines(engine, batch_id)))
    tracemalloc.start()
    try:
        count = size = 0
        previous = ""
        for line in _lines(engine, batch_id):
            custom_id = line[len('{"custom_id": "') :].split('"', 1)[0]
            assert custom_id > previous  # submission order
            previous = custom_id
            count += 1
            size += len(line)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == ITEMS
    # ~15 MB of JSONL went out; the process never held more than a few pages of it.
    assert size > 10_000_000
    assert peak < size / 4, (peak, size)

    assert sum(1 for _ in _lines(engine, batch_id, ["queued"])) == ITEMS
    assert sum(1 for _ in _lines(engine, batch_id, ["failed"])) == 0
