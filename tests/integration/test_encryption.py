"""Encryption at rest, proved on real processes: an API and a worker with LLMQ_ENCRYPTION_KEYS,
their own Postgres database and Redis DB. Distinctive text sent in is found nowhere in a
`pg_dump` of the database or in any Redis value, while the API returns it in clear; keys rotate
while jobs run, `llmq keys rotate-data` moves every row to the newest key, the old key is
removed, and every result still reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pgserver
import pytest
import redis
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from llmq import store
from llmq.localstack.embedded import free_port
from llmq.localstack.processes import Stack
from llmq.store.crypto import PREFIX, key_id
from llmq.store.engine import get_engine

from ..helpers import wait_for

SECRET_INPUT = "Quokka7731Zephyr"  # in the documents
SECRET_VARIABLE = "Wombat4419Saffron"  # a template variable
SECRET_FILE = "Narwhal5520Indigo"  # an uploaded compat file


def _llmq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


class Running:
    """An API and a worker on one environment (stopped gracefully: in-flight jobs finish)."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str) -> None:
        self.port = free_port()
        self.stack = Stack(env=env, log_dir=log_dir / name)
        self.stack.start_api("127.0.0.1", self.port)
        self.stack.start_worker(
            f"{name}-{uuid.uuid4().hex[:6]}",
            queues="llm.high,llm.default,llm.low",
            concurrency=4,
            pool="threads",
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.stack.stop()


@pytest.fixture()
def enc_env(isolated_env: dict[str, str]) -> dict[str, str]:
    return {**isolated_env, "LLMQ_ENCRYPTION_KEYS": Fernet.generate_key().decode()}


@pytest.fixture()
def stacks() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for running in started:
        running.stop()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _submit(url: str, key: str, items: list[dict[str, Any]], **body: Any) -> str:
    response = httpx.post(
        f"{url}/v1/batches",
        json={"items": items, "chain": ["local:extractive"], **body},
        headers=_auth(key),
        timeout=30,
    )
    assert response.status_code in (200, 201, 202), response.text
    return str(response.json()["id"])


def _results(url: str, key: str, batch_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/v1/batches/{batch_id}/results", headers=_auth(key), timeout=30)
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def _wait_done(url: str, key: str, batch_id: str, timeout: float = 120) -> None:
    def done() -> bool:
        response = httpx.get(f"{url}/v1/batches/{batch_id}", headers=_auth(key), timeout=10)
        return response.status_code == 200 and response.json()["status"] == "completed"

    wait_for(done, timeout=timeout, what=f"batch {batch_id} completed")


def _pg_dump(database_url: str) -> str:
    binary = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_dump"
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    done = subprocess.run(
        [str(binary), "--data-only", "--no-owner", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "COPY public.jobs" in done.stdout  # the dump really holds the data
    return done.stdout


def _redis_values(url: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    values: list[bytes] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        values.append(key)
        if kind == "string":
            values.append(client.get(key) or b"")
        elif kind == "hash":
            for field, value in client.hgetall(key).items():
                values += [field, value]
        elif kind == "list":
            values += client.lrange(key, 0, -1)
        elif kind == "set":
            values += list(client.smembers(key))
        elif kind == "zset":
            values += client.zrange(key, 0, -1)
        elif kind == "stream":
            for _, entry in client.xrange(key):
                for field, value in entry.items():
                    values += [field, value]
    return values


def test_distinctive_text_is_nowhere_at_rest_but_the_api_returns_it(
    enc_env: dict[str, str], stacks: list[Running], tmp_path: Path
) -> None:
    running = Running(enc_env, tmp_path, "enc")
    stacks.append(running)
    key = store.create_api_key(get_engine(enc_env["DATABASE_URL"]), "enc-tenant")
    document = (
        f"The {SECRET_INPUT} festival opened in the harbour town on Friday. "
        f"Visitors counted {SECRET_INPUT} lanterns along the river. The mayor spoke briefly."
    )
    items = [
        {
            "custom_id": "d0",
            "input": document,
            "params": {"variables": {"question": f"What about {SECRET_VARIABLE}?"}},
        }
    ]
    first = _submit(running.url, key, items, template="summarize_for_question")
    _wait_done(running.url, key, first)
    # The same job again: answered from the (encrypted) cache.
    second = _submit(running.url, key, items, template="summarize_for_question")
    _wait_done(running.url, key, second)

    upload = httpx.post(
        f"{running.url}/openai/v1/files",
        headers=_auth(key),
        data={"purpose": "batch"},
        files={
            "file": (
                "in.jsonl",
                json.dumps(
                    {
                        "custom_id": "f0",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {
                            "model": "local:extractive",
                            "messages": [{"role": "user", "content": f"Say {SECRET_FILE}."}],
                        },
                    }
                ).encode()
                + b"\n",
            )
        },
        timeout=30,
    )
    assert upload.status_code == 200, upload.text
    content = httpx.get(
        f"{running.url}/openai/v1/files/{upload.json()['id']}/content",
        headers=_auth(key),
        timeout=30,
    )
    assert SECRET_FILE in content.text  # the API serves the file in clear

    for batch_id, cache_hit in ((first, False), (second, True)):
        rows = _results(running.url, key, batch_id)
        assert [r["status"] for r in rows] == ["succeeded"]
        assert SECRET_INPUT in rows[0]["result"]  # the API returns the answer in clear
        assert rows[0]["cache_hit"] is cache_hit

    dump = _pg_dump(enc_env["DATABASE_URL"])
    assert PREFIX in dump  # sealed values are there...
    for secret in (SECRET_INPUT, SECRET_VARIABLE, SECRET_FILE):
        assert secret not in dump  # ...and the texts are not
    assert SECRET_FILE.encode().hex() not in dump  # nor the file as bytea hex

    values = _redis_values(enc_env["REDIS_URL"])
    assert any(v.startswith(b"llmq:cache:") for v in values)  # the cache entry exists
    for secret in (SECRET_INPUT, SECRET_VARIABLE, SECRET_FILE):
        assert not [v for v in values if secret.encode() in v]


def test_keys_rotate_mid_batch_and_nothing_is_lost(
    enc_env: dict[str, str], stacks: list[Running], tmp_path: Path
) -> None:
    old_key = enc_env["LLMQ_ENCRYPTION_KEYS"]
    new_key = Fernet.generate_key().decode()
    old_prefix, new_prefix = (PREFIX + key_id(k) + ":" for k in (old_key, new_key))
    engine = create_engine(enc_env["DATABASE_URL"])
    key = store.create_api_key(engine, "rotating-tenant")

    def items(tag: str, n: int) -> list[dict[str, Any]]:
        return [
            {
                "custom_id": f"{tag}{i}",
                "input": f"Report {tag} {i} on the {SECRET_INPUT} survey. The count rose. "
                f"Volunteers met weekly.",
            }
            for i in range(n)
        ]

    old = Running(enc_env, tmp_path, "old")
    stacks.append(old)
    batch_a = _submit(old.url, key, items("a", 40))
    # Mid-batch: a second API and worker with the new key first; the old ones then stop.
    rotated_env = {**enc_env, "LLMQ_ENCRYPTION_KEYS": f"{new_key},{old_key}"}
    rotated = Running(rotated_env, tmp_path, "rotated")
    stacks.append(rotated)
    batch_b = _submit(rotated.url, key, items("b", 20))
    old.stop()
    _wait_done(rotated.url, key, batch_a)
    _wait_done(rotated.url, key, batch_b)
    before = {b: _results(rotated.url, key, b) for b in (batch_a, batch_b)}
    assert all(r["status"] == "succeeded" for rows in before.values() for r in rows)

    def count(prefix: str) -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT (SELECT count(*) FROM jobs WHERE starts_with(input, :p) "
                        "OR starts_with(result, :p)) + "
                        "(SELECT count(*) FROM attempts WHERE starts_with(output, :p))"
                    ),
                    {"p": prefix},
                ).scalar_one()
            )

    assert count(old_prefix) > 0 and count(new_prefix) > 0  # both keys in use at once

    rotate = _llmq("keys", "rotate-data", "--batch-rows", "7", env=rotated_env)
    assert rotate.returncode == 0, rotate.stderr
    assert "re-encrypted rows: jobs " in rotate.stdout
    assert count(old_prefix) == 0
    again = _llmq("keys", "rotate-data", env=rotated_env)  # resumable: nothing left to do
    assert again.returncode == 0, again.stderr
    assert "jobs 0, attempts 0, eval_log 0, compat_files 0" in again.stdout

    rotated.stop()
    new_only = Running({**enc_env, "LLMQ_ENCRYPTION_KEYS": new_key}, tmp_path, "new")
    stacks.append(new_only)
    after = {b: _results(new_only.url, key, b) for b in (batch_a, batch_b)}
    assert after == before
    assert sum(len(rows) for rows in after.values()) == 60
    assert all(SECRET_INPUT in r["result"] for rows in after.values() for r in rows)
    engine.dispose()


def test_a_value_sealed_under_a_missing_key_is_a_clear_503(
    http: Any, engine: Any, new_key: Any
) -> None:
    """The operator's keys, not the client's request: a JSON 503 naming the setting, no 500."""
    key = new_key()
    principal = store.authenticate(engine, key)
    assert principal is not None
    sealed = f"{PREFIX}{key_id(Fernet.generate_key().decode())}:AAAA"  # this process has no keys
    job_id = store.insert_job(
        engine, tenant_id=principal.tenant_id, template="summarize", template_version=1,
        priority="low", chain=["local:extractive"], item=store.NewJob(input="a document"),
    )  # fmt: skip
    with engine.begin() as conn:  # as a worker holding that key would have finished it
        conn.execute(text("UPDATE jobs SET status = 'succeeded', result = :r WHERE id = :i"),
                     {"r": sealed, "i": job_id})  # fmt: skip
    answer = http.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "decryption_failed" and "LLMQ_ENCRYPTION_KEYS" in error["message"]
