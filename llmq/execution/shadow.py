"""The worker's side of shadow runs: when a primary job succeeds and its template (or batch) has
a shadow spec that takes the job, the finishing write also inserts the shadow job and both
eval_log rows are written as each job ends (llmq/store/evals.py); the shadow is published to
the low queue after the commit (the reconciler publishes it if that fails).

A shadow job runs the ordinary pipeline with three differences, all decided by `kind`: it never
reads or writes the cache (pipeline.py), it has no batch (so no client view, count, progress
or webhook sees it), and it starts no shadow of its own. When the spec names a judge, a shadow
that succeeded starts a `judge` job the same way (in its finishing transaction); the judge's
scores are written onto both rows of the pair when it finishes (llmq/evals/judge.py).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from llmq import store
from llmq.evals import judge, scores
from llmq.evals.spec import ShadowSpec, variant_label
from llmq.execution.output_review import OutputSpec
from llmq.store.models import JobStatus
from llmq.templates import TemplateError, get_template

log = logging.getLogger(__name__)

SHADOW = "shadow"
PRIMARY = "primary"
JUDGE = "judge"
# Batches whose spec was read; specs never change after submission, so this only bounds memory.
_BATCH_MEMO = 1024
_UNKNOWN = object()


class Shadows:
    """`attach` before a job's finish; `publish` after it committed."""

    def __init__(
        self,
        specs: Mapping[str, ShadowSpec],
        batch_spec: Callable[[uuid.UUID], dict[str, Any] | None],
        publish: Callable[[Sequence[tuple[str, str]]], None],
        undo_dispatch: Callable[[Sequence[str]], None],
        judge_context: Callable[[uuid.UUID], store.JudgeContext | None] = lambda _: None,
    ) -> None:
        self.specs = dict(specs)
        self._judge_context = judge_context
        self._batch_spec = batch_spec
        self._publish = publish
        self._undo = undo_dispatch
        self._batches: dict[uuid.UUID, object] = {}

    def spec_for(self, job: store.ClaimedJob) -> ShadowSpec | None:
        """The batch's own spec, else the template's from the settings."""
        if job.batch_id is not None:
            # Worker threads share the memo: one lookup, never a check and then a read.
            found = self._batches.get(job.batch_id, _UNKNOWN)
            if found is _UNKNOWN:
                raw = self._batch_spec(job.batch_id)
                found = None if raw is None else ShadowSpec.parse(raw)
                if len(self._batches) >= _BATCH_MEMO:
                    self._batches.clear()
                self._batches[job.batch_id] = found
            if isinstance(found, ShadowSpec):
                return found
        return self.specs.get(job.template)

    def attach(self, job: store.ClaimedJob, outcome: store.Outcome) -> store.Outcome:
        """The outcome with the eval_log row (and the shadow or judge job) to write as it is
        recorded. Evaluation never fails a job: a bug here leaves the outcome as it was."""
        try:
            return self._attach(job, outcome)
        except store.UNAVAILABLE:
            raise  # the pipeline retries, then hands the lease over
        except Exception:
            log.exception("job %s: no evaluation written", job.id)
            return outcome

    def _attach(self, job: store.ClaimedJob, outcome: store.Outcome) -> store.Outcome:
        if job.kind == JUDGE:
            return replace(outcome, evals=self._verdict(job, outcome))
        if job.kind == SHADOW:
            return replace(outcome, evals=self._shadow_entry(job, outcome))
        if (
            job.parent_id is not None  # a chunk of a long document: its parent is the job
            or outcome.status != JobStatus.SUCCEEDED
            or outcome.result is None
        ):
            return outcome
        spec = self.spec_for(job)
        if spec is None or not spec.takes(job.id):
            return outcome
        shadow = store.NewShadow(
            id=uuid.uuid4(),
            template_version=spec.version or job.template_version,
            chain=list(spec.chain),
            judge=spec.judge,
        )
        return replace(outcome, evals=self._entry(job, outcome, PRIMARY, shadow))

    def publish(self, outcome: store.Outcome) -> None:
        """After the finish committed: send its shadow or judge job to the low queue."""
        written = outcome.evals
        if written is None:
            return
        started = [new.id for new in (written.shadow, written.judge) if new is not None]
        if not started:
            return
        job_ids = [str(job_id) for job_id in started]
        try:
            self._publish([(job_id, store.SHADOW_PRIORITY) for job_id in job_ids])
        except Exception as exc:  # the row is durable; the reconciler publishes it
            log.warning("could not publish job %s now (%s)", job_ids[0], type(exc).__name__)
            self._undo(job_ids)

    def _shadow_entry(self, job: store.ClaimedJob, outcome: store.Outcome) -> store.EvalWrite:
        entry = self._entry(job, outcome, SHADOW)
        if outcome.status != JobStatus.SUCCEEDED or outcome.result is None:
            return entry
        context = self._judge_context(job.id)
        if context is None or context.primary_output is None:
            return entry
        judge_id = uuid.uuid4()
        text = judge.judge_input(
            job.input, context.primary_output, outcome.result, swap=judge.swapped(judge_id)
        )
        new = store.NewJudge(judge_id, context.link, text, judge.TEMPLATE, dict(judge.PARAMS))
        return replace(entry, judge=new)

    @staticmethod
    def _verdict(job: store.ClaimedJob, outcome: store.Outcome) -> store.EvalWrite | None:
        if outcome.status != JobStatus.SUCCEEDED or outcome.result is None:
            return None
        verdict = judge.parse_verdict(outcome.result, swap=judge.swapped(job.id))
        if verdict is None:
            log.warning("judge job %s: the answer is not two scores 1-10", job.id)
            return None
        return store.EvalWrite(
            role=JUDGE, variant="", template_version=job.template_version,
            chain=list(job.chain), output=None, verdict=verdict,
        )  # fmt: skip

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
