"""Completion webhooks against a real local HTTP receiver that fails once and then accepts:
signed, redelivered with backoff by the worker, every attempt recorded and visible."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import text

from llmq import store
from llmq.webhooks import delivery as webhooks

from ..helpers import Services, auth, wait_for


class Receiver:
    """Answers 500 to the first `fail_first` POSTs, then 200; keeps what it received."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.received: list[tuple[dict[str, str], bytes, int]] = []
        self._lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    status = 500 if len(receiver.received) < receiver.fail_first else 200
                    receiver.received.append((dict(self.headers.items()), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@contextlib.contextmanager
def receiving(fail_first: int) -> Iterator[tuple[str, Receiver]]:
    receiver = Receiver(fail_first)
    server = ThreadingHTTPServer(("127.0.0.1", 0), receiver.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/llmq", receiver
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_is_signed_redelivered_after_a_failure_and_recorded(
    http: Any, new_key: Any, worker: Any, services: Services
) -> None:
    key = new_key()
    items = [{"input": "The library reopened. Visitors returned."}, {"input": "It snowed."}]
    with receiving(fail_first=1) as (url, receiver):
        body = {"items": items, "chain": ["local:extractive"], "webhook_url": url}
        no_secret = http.post("/v1/batches", json=body, headers=auth(key))
        assert no_secret.status_code == 422
        assert "POST /v1/webhooks/secret" in no_secret.json()["error"]["message"]

        created = http.post("/v1/webhooks/secret", headers=auth(key))
        assert created.status_code == 201
        secret = created.json()["secret"]
        assert secret.startswith("whsec_")

        batch_id = http.post("/v1/batches", json=body, headers=auth(key)).json()["id"]

        def delivered() -> dict[str, Any] | None:
            state: dict[str, Any] = http.get(
                f"/v1/batches/{batch_id}/webhooks", headers=auth(key)
            ).json()
            return state if state["webhook"]["status"] == "delivered" else None

        state = wait_for(delivered, 60, "the webhook to be delivered")
        received = list(receiver.received)

    assert [(d["attempt_no"], d["outcome"], d["http_status"]) for d in state["deliveries"]] == [
        (1, "failed", 500),
        (2, "delivered", 200),
    ]
    assert state["deliveries"][0]["error"] == "HTTP 500"
    assert len({d["event_id"] for d in state["deliveries"]}) == 1
    assert [status for _, _, status in received] == [500, 200]
    for headers, raw, _ in received:
        webhooks.verify(secret, headers[webhooks.SIGNATURE_HEADER], raw)
        with pytest.raises(webhooks.SignatureError):
            webhooks.verify("whsec_wrong", headers[webhooks.SIGNATURE_HEADER], raw)
        event = json.loads(raw)
        assert event["id"] == headers[webhooks.EVENT_ID_HEADER] == state["deliveries"][0][
            "event_id"]  # fmt: skip
        assert event["type"] == "batch.completed"
        assert event["data"]["id"] == batch_id
        assert event["data"]["counts"]["succeeded"] == 2
    batch = http.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()
    assert batch["webhook"] == {"url": url, "status": "delivered", "attempts": 2,
                                "next_attempt_at": None}  # fmt: skip
    assert http.get(f"/v1/batches/{batch_id}/webhooks", headers=auth(new_key())).status_code == 404
    # The secret is never written to the worker's log.
    logs = "".join(p.read_text(errors="replace") for p in (services.data_dir / "logs").glob("*"))
    assert secret not in logs


def test_webhook_gives_up_after_the_bounded_attempts(http: Any, new_key: Any, worker: Any) -> None:
    key = new_key()
    http.post("/v1/webhooks/secret", headers=auth(key))
    with receiving(fail_first=100) as (url, receiver):
        body = {"items": [{"input": "A short note."}], "chain": ["local:extractive"],
                "webhook_url": url}  # fmt: skip
        batch_id = http.post("/v1/batches", json=body, headers=auth(key)).json()["id"]

        def gave_up() -> dict[str, Any] | None:
            state: dict[str, Any] = http.get(
                f"/v1/batches/{batch_id}/webhooks", headers=auth(key)
            ).json()
            return state if state["webhook"]["status"] == "failed" else None

        state = wait_for(gave_up, 90, "the webhook to be given up")
    # Default 6 attempts, backoff 0.2 s doubling (tests), then no more.
    assert [d["attempt_no"] for d in state["deliveries"]] == [1, 2, 3, 4, 5, 6]
    assert len(receiver.received) == 6
    gaps = [
        (b["created_at"], a["created_at"])
        for a, b in zip(state["deliveries"], state["deliveries"][1:], strict=False)
    ]
    assert all(later > earlier for later, earlier in gaps)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:6379/",
        "http://[::1]/",
        # 127.0.0.1 as the resolver also reads it (inet_aton), and in IPv6 clothing.
        "http://2130706433:6379/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
    ],
)
def test_internal_webhook_destinations_are_refused_at_submission(
    new_key: Any, engine: Any, url: str
) -> None:
    from fastapi.testclient import TestClient

    from llmq.api.app import create_app
    from llmq.settings import Settings

    key = new_key()
    with TestClient(create_app(Settings(webhook_allow_private=False))) as client:
        assert client.post("/v1/webhooks/secret", headers=auth(key)).status_code == 201
        body = {"items": [{"input": "It snowed."}], "chain": ["local:extractive"],
                "webhook_url": url}  # fmt: skip
        refused = client.post("/v1/batches", json=body, headers=auth(key))
        assert refused.status_code == 422
        error = refused.json()["error"]
        assert error["code"] == "webhook_destination_refused"
        assert "public addresses" in error["message"]
    principal = store.authenticate(engine, key)
    assert principal is not None
    with engine.connect() as conn:
        written = conn.execute(
            text("SELECT count(*) FROM batches WHERE tenant_id = :t"), {"t": principal.tenant_id}
        ).scalar_one()
    assert written == 0


@pytest.mark.parametrize("port", ["99999", "abc", "-1", "0"])
def test_a_malformed_webhook_url_is_a_422_at_submission(http: Any, new_key: Any, port: str) -> None:
    key = new_key()
    assert http.post("/v1/webhooks/secret", headers=auth(key)).status_code == 201
    url = f"http://hooks.example.com:{port}/x"
    body = {"items": [{"input": "It snowed."}], "chain": ["local:extractive"], "webhook_url": url}
    as_json = http.post("/v1/batches", json=body, headers=auth(key))
    # The same check on a JSONL upload, whose fields arrive as a form.
    upload = http.post(
        "/v1/batches",
        headers=auth(key),
        files={"file": ("items.jsonl", b'{"input": "It snowed."}\n')},
        data={"chain": '["local:extractive"]', "webhook_url": url},
    )
    for refused in (as_json, upload):
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["code"] == "invalid_webhook_url"
        assert "webhook_url" in error["message"] and "port" in error["message"].lower()


def _pending_webhook(http: Any, new_key: Any, engine: Any) -> str:
    """A batch whose completion webhook is due later (nobody else's reconciler takes it)."""
    key = new_key()
    http.post("/v1/webhooks/secret", headers=auth(key))
    body = {"items": [{"input": "It snowed."}], "chain": ["local:extractive"],
            "webhook_url": "https://hooks.example.com/llmq"}  # fmt: skip
    batch_id: str = http.post("/v1/batches", json=body, headers=auth(key)).json()["id"]
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE batches SET webhook_status = 'pending', webhook_event_id = "
                "gen_random_uuid(), webhook_next_at = now() + interval '1 hour' WHERE id = :b"
            ),
            {"b": batch_id},
        )
    return batch_id


def _webhook_state(engine: Any, batch_id: str) -> tuple[str, int]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT webhook_status, webhook_attempts FROM batches WHERE id = :b"),
            {"b": batch_id},
        ).one()
    return row[0], row[1]


def test_a_crashing_delivery_is_one_failed_attempt_within_the_maximum(
    http: Any, new_key: Any, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmq.settings import get_settings

    batch_id = _pending_webhook(http, new_key, engine)
    # Backoff of an hour: each next attempt is made here, not by a running reconciler.
    settings = get_settings().model_copy(
        update={"webhook_max_attempts": 3, "webhook_backoff_base_s": 3600.0}
    )

    def crash(*args: Any, **kwargs: Any) -> webhooks.DeliveryResult:
        raise ValueError("Port out of range 0-65535")  # what a bad stored URL raised

    monkeypatch.setattr(webhooks, "post", crash)
    outcomes = [webhooks.deliver_attempt(engine, settings, batch_id, n) for n in (1, 2, 3, 4)]

    assert outcomes == ["failed", "failed", "failed", "not_claimable"]
    assert _webhook_state(engine, batch_id) == ("failed", 3)
    deliveries = store.list_webhook_deliveries(engine, uuid.UUID(batch_id))
    assert [(d["attempt_no"], d["outcome"], d["error"]) for d in deliveries] == [
        (n, "failed", "ValueError: Port out of range 0-65535") for n in (1, 2, 3)
    ]


def test_a_lost_last_attempt_ends_the_webhook_instead_of_counting_on(
    http: Any, new_key: Any, engine: Any
) -> None:
    """The operator's 25 attempts of 6: the last allowed attempt was claimed, never recorded,
    and the reconciler handed out attempt 7, 8, ... each time its lease ran out."""
    from llmq.settings import get_settings
    from llmq.workers import batch_upkeep

    batch_id = _pending_webhook(http, new_key, engine)
    for n in range(1, 7):  # six attempts claimed, none recorded (each worker died)
        assert store.claim_webhook_attempt(engine, batch_id, n, 40.0) is not None
    with engine.begin() as conn:  # the last lease has run out
        conn.execute(
            text("UPDATE batches SET webhook_next_at = now() - interval '1 second' WHERE id = :b"),
            {"b": batch_id},
        )
    with engine.begin() as conn:  # the reconciler's pass
        due = batch_upkeep.collect(conn, get_settings()).webhooks_due
    assert get_settings().webhook_max_attempts == 6
    assert batch_id not in [b for b, _, _ in due]
    assert _webhook_state(engine, batch_id) == ("failed", 6)
