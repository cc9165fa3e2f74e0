"""The worker's Celery application, for Celery's own command line (run from the repository root):
`celery -A workers.celery inspect active`, `celery -A workers.celery purge -Q llm.low`.

Start workers with `llmq worker` (it sizes the pool and the database connections). The code lives
in the `llmq` package: llmq/workers/ (the Celery app, queues, reconciler, runtime) and
llmq/tasks/ (the task bodies); this folder only points at it, so that there is one import root.
"""

# Importing the task modules registers the tasks on the app.
import llmq.tasks.jobs
import llmq.tasks.webhooks  # noqa: F401
from llmq.workers.celery_app import app

__all__ = ["app"]
