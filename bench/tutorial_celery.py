"""The set-up a user writes first, from a Celery tutorial: Celery's defaults (prefork pool,
concurrency = cores, early acks, prefetch 4), one task that calls the OpenAI SDK inline and
stores the answer in Postgres. No llmq code: the baseline llmq is compared with.

The driver (bench/pools.py) creates the `tutorial_results` table and counts its rows.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery
from openai import OpenAI
from sqlalchemy import Engine, create_engine, text

app = Celery("tutorial", broker=os.environ["REDIS_URL"])
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)

PROMPT = "Summarize the following document in three sentences."
_local = threading.local()  # clients are made in each pool process after the fork


def _clients() -> tuple[Any, Engine]:
    if not hasattr(_local, "openai"):
        _local.openai = OpenAI()  # OPENAI_BASE_URL / OPENAI_API_KEY from the environment
        url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
        _local.engine = create_engine(url, pool_size=1)
    return _local.openai, _local.engine


@app.task(name="tutorial.summarize")
def summarize(item: int, document: str) -> None:
    client, engine = _clients()
    response = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": PROMPT}, {"role": "user", "content": document}],
        max_tokens=256,
    )
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO tutorial_results (item, output) VALUES (:i, :o)"),
            {"i": item, "o": response.choices[0].message.content},
        )
