"""The provider Batch lane's decisions, as pure functions: which link of a job's chain goes
upstream, when a group of waiting jobs is uploaded, how an upload is cut to the provider's
limits, and how long to wait before the next poll. No I/O: llmq/execution/lane.py acts on them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


def batch_link(chain: Sequence[str], batch_providers: Collection[str]) -> str | None:
    """The first link of the chain whose provider has a Batch API ("provider:model"); None
    when no link has one (the job runs on the sync lane)."""
    for link in chain:
        if link.split(":", 1)[0] in batch_providers:
            return link
    return None


@dataclass
class Group:
    """Waiting lane jobs that share an upstream provider:model (from one or more chains)."""

    link: str
    chains: list[list[str]] = field(default_factory=list)
    jobs: int = 0
    oldest_age_s: float = 0.0


def group_waiting(
    chains: Sequence[tuple[Sequence[str], int, float]], batch_providers: Collection[str]
) -> tuple[dict[str, Group], list[list[str]]]:
    """(chain, waiting jobs, oldest age in s) -> groups per link, and the chains with no
    batch link at all (their jobs run on the sync lane)."""
    groups: dict[str, Group] = {}
    no_link: list[list[str]] = []
    for chain, jobs, age_s in chains:
        link = batch_link(chain, batch_providers)
        if link is None:
            no_link.append(list(chain))
            continue
        group = groups.setdefault(link, Group(link))
        group.chains.append(list(chain))
        group.jobs += jobs
        group.oldest_age_s = max(group.oldest_age_s, age_s)
    return groups, no_link


def is_due(group: Group, max_items: int, max_age_s: float) -> bool:
    """Upload when enough jobs wait for one full upload, or the oldest waited long enough."""
    return group.jobs >= max_items or group.oldest_age_s >= max_age_s


def cut(
    items: Sequence[T], size_of: Callable[[T], int], max_items: int, max_bytes: int
) -> list[list[T]]:
    """Consecutive uploads of at most `max_items` items and `max_bytes` bytes each (an item
    bigger than `max_bytes` alone still gets its own upload: the provider will say no)."""
    uploads: list[list[T]] = []
    current: list[T] = []
    used = 0
    for item in items:
        size = size_of(item)
        if current and (len(current) >= max_items or used + size > max_bytes):
            uploads.append(current)
            current, used = [], 0
        current.append(item)
        used += size
    if current:
        uploads.append(current)
    return uploads


def poll_delay(polls: int, first_s: float, cap_s: float) -> float:
    """Seconds until the next poll of an upstream batch after `polls` polls: doubling from
    `first_s` to `cap_s` (most batches end within an hour; a day is the limit)."""
    return float(min(cap_s, first_s * (2 ** min(polls, 30))))
