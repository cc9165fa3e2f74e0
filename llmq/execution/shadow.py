"""The worker's side of shadow runs: when a primary job succeeds and its template (or batch) has
a shadow spec that takes the job, the finishing write also inserts the shadow job and both
eval_log rows are written as each job ends (llmq/store/evals.py); the shadow is published to
the low queue after the commit (the reconciler publishes it if that fails).

A shadow job runs the ordinary pipeline with three differences, all decided by `kind`: it never
reads or writes the cache (pipeline.py), it has no batch (so no client view, count, progress
or webhook sees it), and it starts no shadow of its own.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from llmq import store
from llmq.evals import scores
from llmq.evals.spec import ShadowSpec, variant_label
from llmq.execution.output_review import OutputSpec
from llmq.store.models import JobStatus
from llmq.templates import TemplateError, get_template

log = logging.getLogger(__name__)

SHADOW = "shadow"
PRIMARY = "primary"
# Batches whose spec was read; specs never change after submission, so this only bounds memory.
_BATCH_MEMO = 1024


class Shadows:
    """`attach` before a job's finish; `publish` after it committed."""

    def __init__(
        self,
        specs: Mapping[str, ShadowSpec],
        batch_spec: Callable[[uuid.UUID], dict[str, Any] | None],
        publish: Callable[[Sequence[tuple[str, str]]], None],
        undo_dispatch: Callable[[Sequence[str]], None],
    ) -> None:
        self.specs = dict(specs)
        self._batch_spec = batch_spec
        self._publish = publish
        self._undo = undo_dispatch
        self._batches: dict[uuid.UUID, ShadowSpec | None] = {}

    def spec_for(self, job: store.ClaimedJob) -> ShadowSpec | None:
        """The batch's own spec, else the template's from the settings."""
        if job.batch_id is not None:
            if job.batch_id not in self._batches:
                if len(self._batches) >= _BATCH_MEMO:
                    self._batches.clear()
                raw = self._batch_spec(job.batch_id)
                self._batches[job.batch_id] = None if raw is None else ShadowSpec.parse(raw)
            found = self._batches[job.batch_id]
            if found is not None:
                return found
        return self.specs.get(job.template)

    def attach(self, job: store.ClaimedJob, outcome: store.Outcome) -> store.Outcome:
        """The outcome with the eval_log row (and the shadow job) to write as it is recorded."""
        if job.kind == SHADOW:
            return replace(outcome, evals=self._entry(job, outcome, SHADOW))
        if (
            job.parent_id is not None  # a chunk of a long document: its parent is the job
            or outcome.status != JobStatus.SUCCEEDED
            or outcome.result is None
        ):
            return outcome
        try:
            spec = self.spec_for(job)
        except store.UNAVAILABLE:
            raise
        except Exception:  # a spec is validated before it is stored; never fail the job for it
            log.exception("job %s: unusable shadow spec, no shadow run", job.id)
            return outcome
        if spec is None or not spec.takes(job.id):
            return outcome
        shadow = store.NewShadow(
            id=uuid.uuid4(),
            template_version=spec.version or job.template_version,
            chain=list(spec.chain),
        )
        return replace(outcome, evals=self._entry(job, outcome, PRIMARY, shadow))

    def publish(self, outcome: store.Outcome) -> None:
        """After the finish committed: send its shadow job to the low queue."""
        if outcome.evals is None or outcome.evals.shadow is None:
            return
        job_id = str(outcome.evals.shadow.id)
        try:
            self._publish([(job_id, store.SHADOW_PRIORITY)])
        except Exception as exc:  # the row is durable; the reconciler publishes it
            log.warning("could not publish shadow job %s now (%s)", job_id, type(exc).__name__)
            self._undo([job_id])

    @staticmethod
    def _entry(
        job: store.ClaimedJob,
        outcome: store.Outcome,
        role: str,
        shadow: store.NewShadow | None = None,
    ) -> store.EvalWrite:
        found: dict[str, float] = {}
        if outcome.status == JobStatus.SUCCEEDED and outcome.result is not None:
            spec = OutputSpec.from_params(job.params)
            found = scores.score(
                outcome.result,
                job.input,
                wants_json=spec.wants_json or _template_wants_json(job),
                schema=spec.schema,
                findings=scores.output_findings(outcome.guardrails),
            )
        return store.EvalWrite(
            role=role,
            variant=variant_label(job.template_version, job.chain),
            template_version=job.template_version,
            chain=list(job.chain),
            output=outcome.result,
            scores=found,
            shadow=shadow,
        )


def _template_wants_json(job: store.ClaimedJob) -> bool:
    try:
        return get_template(job.template, job.template_version).output == "json"
    except TemplateError:
        return False
