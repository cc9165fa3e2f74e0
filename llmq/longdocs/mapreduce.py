"""Map-reduce of long documents.

A summarizing job whose document is larger than the chunk budget (the configured chunk size, or
what the smallest context window of its chain leaves room for) does not call a provider. It is
split (llmq/longdocs/chunking.py) into chunk jobs (level 0) that run in parallel on the same queue
as ordinary jobs, with the normal retry path, and it waits. When the last job of a level succeeds,
the summaries are reduced: into one final job with the parent's own template, version and style
when they fit one budget, else into several `combine_summaries` jobs (the next level), and so
on. The final job's summary becomes the parent's result. A job of a level that ends failed,
blocked or cancelled fails the parent (`chunk_failed` / `reduce_failed`) and cancels the
children that have not started.

The advance runs in the worker that finished a child (under a row lock on the parent, so two
children finishing together advance it once); the reconciler's `sweep` finishes any advance a
crash interrupted. The parent's tokens and cost are rolled up from every child's attempts.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from llmq import store
from llmq.cost.pricing import PriceTable
from llmq.errors import JobErrorCode
from llmq.longdocs.chunking import split_document
from llmq.longdocs.tokenizer import Tokenizer, get_tokenizer
from llmq.store.models import JobStatus
from llmq.templates import Template

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[tuple[str, str]]], None]

SECTION_TEMPLATE = "summarize_section"
COMBINE_TEMPLATE = "combine_summaries"
INTERMEDIATE_STYLE = "paragraph"
# Room for the template's own words around the document.
PROMPT_OVERHEAD_TOKENS = 300
# The pipeline checks context windows with an estimate that errs high, and other models'
# tokenizers differ from cl100k: a window-derived budget keeps this share of the room.
WINDOW_SHARE = 0.75


@dataclass(frozen=True)
class LongDocConfig:
    chunk_tokens: int = 8000  # 0: split only what does not fit the chain's context windows
    overlap_tokens: int = 200
    max_output_tokens: int = 512


@dataclass(frozen=True)
class Split:
    """The pipeline's verdict for a long document: run these chunks instead."""

    chunks: list[str]
    route: list[dict[str, Any]]
    guardrails: list[dict[str, Any]]


class LongDocuments:
    def __init__(
        self,
        engine: Engine,
        prices: PriceTable,
        config: LongDocConfig,
        publish: Publish,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.engine = engine
        self.prices = prices
        self.config = config
        self._publish = publish
        self._tokenizer = tokenizer

    @property
    def tokenizer(self) -> Tokenizer:
        # Loaded on first use: most jobs are short and never need it.
        return self._tokenizer or get_tokenizer()

    def budget(self, chain: Sequence[str], max_tokens: int | None = None) -> int | None:
        """Tokens of document one job may carry for this chain, or None for no limit."""
        limits = [self.config.chunk_tokens] if self.config.chunk_tokens > 0 else []
        output = max_tokens or self.config.max_output_tokens
        for link in chain:
            price = self.prices.get(link)
            if price is not None and price.context_window is not None:
                room = price.context_window - output - PROMPT_OVERHEAD_TOKENS
                limits.append(int(room * WINDOW_SHARE))
        return max(64, min(limits)) if limits else None

    # -- the parent -----------------------------------------------------------------------------

    def plan(
        self,
        job: store.ClaimedJob,
        template: Template,
        text: str,
        findings: list[dict[str, Any]],
    ) -> Split | None:
        """A Split when `text` is too long for one job of this template and chain."""
        if not template.summarizes or template.internal or job.parent_id is not None:
            return None
        budget = self.budget(job.chain, _int(job.params.get("max_tokens")))
        # A token is at least one byte, so a short text needs no tokenizer at all.
        if budget is None or len(text.encode("utf-8")) <= budget:
            return None
        total = self.tokenizer.count(text)
        if total <= budget:
            return None
        overlap = min(self.config.overlap_tokens, budget // 4)
        chunks = split_document(text, budget, overlap, self.tokenizer)
        route = [
            {
                "map_reduce": {
                    "document_tokens": total,
                    "chunks": len(chunks),
                    "chunk_tokens": budget,
                    "overlap_tokens": overlap,
                    "tokenizer": self.tokenizer.name,
                }
            }
        ]
        return Split([text[c.start : c.end] for c in chunks], route, findings)

    def start(self, job: store.ClaimedJob, owner: str, split: Split) -> bool:
        params = _intermediate_params(job.params)
        children = [
            store.NewChild(
                template=SECTION_TEMPLATE,
                template_version=1,
                input=chunk,
                params={**params, "variables": {"part": i + 1, "parts": len(split.chunks)}},
                level=0,
                index=i,
            )
            for i, chunk in enumerate(split.chunks)
        ]
        published = store.start_children(
            self.engine, job.id, owner, children, split.route, split.guardrails
        )
        if published is None:
            return False
        self._send(published)
        return True

    # -- the children ---------------------------------------------------------------------------

    def after_child(self, parent_id: uuid.UUID) -> None:
        """The pipeline's hook: the child's own result is saved; a failure to advance the parent
        now is left to the reconciler's sweep instead of failing the child's task."""
        try:
            self.child_finished(parent_id)
        except Exception:
            log.exception("could not advance long document %s now; the reconciler will", parent_id)

    def child_finished(self, parent_id: uuid.UUID) -> str:
        """Advance the parent after one of its children ended; returns what happened."""
        new: list[tuple[str, str]] = []
        with self.engine.begin() as conn:
            parent = store.lock_parent(conn, parent_id)
            if parent is None:
                return "gone"
            if parent.status != JobStatus.WAITING:
                # Ended already (a failed level, or cancelled): stop what has not started.
                store.cancel_open_children(conn, parent_id, f"the parent is {parent.status}")
                what = "parent_ended"
            else:
                what, new = self._advance(conn, parent)
            store.roll_up_parent(conn, parent_id)
        self._send(new)
        return what

    def _advance(self, conn: Any, parent: store.WaitingParent) -> tuple[str, list[tuple[str, str]]]:
        level = store.current_level(conn, parent.id)
        if not level:
            return "no_children", []
        depth = level[0]["chunk_level"]
        for child in level:
            if child["status"] in (JobStatus.FAILED, JobStatus.BLOCKED, JobStatus.CANCELLED):
                code = JobErrorCode.CHUNK_FAILED if depth == 0 else JobErrorCode.REDUCE_FAILED
                stage = "part" if depth == 0 else f"reduce step (level {depth}) part"
                store.finish_parent(
                    conn,
                    parent.id,
                    store.Outcome(
                        status=JobStatus.FAILED,
                        error_code=code,
                        error_message=(
                            f"{stage} {child['chunk_index'] + 1} of {len(level)} ended "
                            f"{child['status']}: {child['error_code']}: {child['error_message']}"
                        ),
                    ),
                )
                store.cancel_open_children(conn, parent.id, f"{code}: the parent failed")
                return code, []
        if any(child["status"] != JobStatus.SUCCEEDED for child in level):
            return "waiting", []
        if depth > 0 and len(level) == 1:
            final = level[0]
            store.finish_parent(
                conn,
                parent.id,
                store.Outcome(
                    status=JobStatus.SUCCEEDED,
                    result=final["result"],
                    provider=final["provider"],
                    model=final["model"],
                ),
            )
            return "succeeded", []
        children = self.reduce_step(parent, [child["result"] or "" for child in level], depth)
        return "reduce", store.add_children(conn, parent.id, children)

    def reduce_step(
        self, parent: store.WaitingParent, summaries: list[str], depth: int
    ) -> list[store.NewChild]:
        """The next level's jobs: one final job in the parent's template when the summaries fit
        one budget, else groups merged by `combine_summaries`."""
        budget = self.budget(parent.chain, _int(parent.params.get("max_tokens"))) or 100_000
        n = len(summaries)
        pieces = [f"Part {i + 1} of {n}:\n{s.strip()}" for i, s in enumerate(summaries)]
        groups = _group(pieces, [self.tokenizer.count(p) for p in pieces], budget)
        if len(groups) == 1:
            return [
                store.NewChild(
                    template=parent.template,
                    template_version=parent.template_version,
                    input="\n\n".join(groups[0]),
                    params=dict(parent.params),
                    level=depth + 1,
                    index=0,
                )
            ]
        params = _intermediate_params(parent.params)
        return [
            store.NewChild(
                template=COMBINE_TEMPLATE,
                template_version=1,
                input="\n\n".join(group),
                params=params,
                level=depth + 1,
                index=i,
            )
            for i, group in enumerate(groups)
        ]

    def _send(self, jobs: list[tuple[str, str]]) -> None:
        if not jobs:
            return
        try:
            self._publish(jobs)
        except Exception as exc:  # the rows are durable; the reconciler publishes them
            log.warning("could not publish %d child jobs now (%s)", len(jobs), type(exc).__name__)
            store.undo_dispatch(self.engine, [job_id for job_id, _ in jobs])


def _group(pieces: list[str], counts: list[int], budget: int) -> list[list[str]]:
    """Consecutive pieces packed into groups of at most `budget` tokens. Each group takes at
    least two pieces, so every reduce level shrinks and the recursion ends."""
    groups: list[list[str]] = []
    current: list[str] = []
    used = 0
    for piece, count in zip(pieces, counts, strict=True):
        if current and used + count > budget and len(current) >= 2:
            groups.append(current)
            current, used = [], 0
        current.append(piece)
        used += count
    if current:
        if len(current) == 1 and groups:
            groups[-1].append(current[0])
        else:
            groups.append(current)
    return groups


def _intermediate_params(params: dict[str, Any]) -> dict[str, Any]:
    """Chunk and combine jobs keep the caller's model settings; their style is fixed and the
    caller's template variables belong to the final job only."""
    kept = {k: v for k, v in params.items() if k not in ("style", "variables")}
    return {**kept, "style": INTERMEDIATE_STYLE}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None


def progress(engine: Engine, job_id: uuid.UUID, status: str) -> dict[str, Any] | None:
    """Chunks done / total and the stage of a split job; None for an ordinary job."""
    rows = store.child_counts(engine, job_id)
    if not rows:
        return None
    terminal = {s.value for s in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.BLOCKED,
                                  JobStatus.CANCELLED)}  # fmt: skip
    levels: dict[int, dict[str, int]] = {}
    for row in rows:
        level = levels.setdefault(row["level"], {"total": 0, "done": 0, "failed": 0})
        level["total"] += row["n"]
        if row["status"] in terminal:
            level["done"] += row["n"]
        if row["status"] != JobStatus.SUCCEEDED and row["status"] in terminal:
            level["failed"] += row["n"]
    chunks = levels.get(0, {"total": 0, "done": 0, "failed": 0})
    top = max(levels)
    stage = "done" if status in terminal else "map" if top == 0 else "reduce"
    return {
        "chunks_total": chunks["total"],
        "chunks_done": chunks["done"],
        "chunks_failed": chunks["failed"],
        "stage": stage,
        "reduce_level": top,
        "reduce_jobs_total": sum(v["total"] for k, v in levels.items() if k > 0),
        "reduce_jobs_done": sum(v["done"] for k, v in levels.items() if k > 0),
    }


def sweep(engine: Engine, documents: LongDocuments, limit: int = 100) -> int:
    """Advance waiting parents whose children all ended (a crash skipped the inline advance)."""
    advanced = 0
    for parent_id in store.stalled_parents(engine, limit):
        try:
            if documents.child_finished(parent_id) != "waiting":
                advanced += 1
        except Exception:  # one broken parent must not stop the others
            log.exception("could not advance long document %s", parent_id)
    return advanced
