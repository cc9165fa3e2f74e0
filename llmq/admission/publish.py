"""Handing admitted work to the broker without letting a broker outage fail the request: the
rows are durable already, and the reconciler publishes whatever could not be published now.
The broker itself is injected (`Broker`), so admission never imports Celery."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llmq.resilience.outage import OutageMemo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Broker:
    """How work is published: `jobs` takes (job id, priority) pairs, `batch` a batch id and its
    priority (its jobs are fanned out by the worker). In the API: llmq/workers/dispatch.py."""

    jobs: Callable[[Sequence[tuple[str, str]]], None]
    batch: Callable[[str, str], None]


# After a failed publish the broker is left alone briefly: each request would otherwise wait
# out a hung broker's timeout, and the reconciler publishes what was skipped.
_outage = OutageMemo(2.0)


def publish_quietly(action: Callable[[], None], what: str) -> bool:
    """Publish now if the broker is up; if not, the job is durable and the reconciler will."""
    if not _outage.available():
        log.info("broker failed moments ago; %s is left to the reconciler", what)
        return False
    try:
        action()
        return True
    except Exception as exc:  # kombu raises several unrelated types for a dead broker
        _outage.failed()
        log.warning("could not publish %s now (%s); the reconciler will", what, type(exc).__name__)
        return False
