"""The set-up a user writes first, from a Celery tutorial: Celery's defaults (prefork pool,
concurrency = cores, early acks, prefetch 4), one task that calls the OpenAI SDK inline and
stores the answer in Postgres. No llmq code: the baseline llmq is compared with. Run on a
threads pool as well, it is the floor of any Celery set-up that makes the SDK call and keeps
the answer (no retries, no records of attempts, no guarantees).

The driver (bench/pools.py) creates the `tutorial_results` table and counts its rows.
"""

from __future__ import annotations

import os
import threading

from celery import Celery
from openai import OpenAI
from sqlalchemy import Engine, create_engine, text

app = Celery("tutorial", broker=os.environ["REDIS_URL"])
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)

PROMPT = "Summarize the following document in three sentences."
_lock = threading.Lock()
_by_process: dict[int, tuple[OpenAI, Engine]] = {}  # prefork children each make their own


def _clients() -> tuple[OpenAI, Engine]:
    with _lock:
        if os.getpid() not in _by_process:
            url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
            # OPENAI_BASE_URL / OPENAI_API_KEY from the environment; a connection per thread at
            # most (the threads pool), opened as needed.
            _by_process[os.getpid()] = (OpenAI(), create_engine(url, pool_size=100))
        return _by_process[os.getpid()]


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
