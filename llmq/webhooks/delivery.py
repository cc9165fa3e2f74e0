"""Completion webhooks: per-tenant secrets, Stripe-style signatures, one delivery attempt.

Signature header: `Llmq-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
A receiver recomputes the HMAC over the raw body and rejects old timestamps (replays).
Secrets are derived, not stored: secret = HMAC(master key, per-tenant random salt), so the
database alone cannot sign, and rotating the salt revokes the old secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import Engine

from llmq import store
from llmq.errors import LlmqError
from llmq.settings import Settings
from llmq.webhooks.destinations import destination_refusal, url_problem

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Llmq-Signature"
EVENT_ID_HEADER = "Llmq-Webhook-Id"
SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300


class SignatureError(LlmqError, ValueError):
    """A webhook signature header that is malformed, stale or does not match the body."""


def new_salt() -> str:
    return secrets.token_hex(32)


def derive_secret(master_key: str, salt: str) -> str:
    digest = hmac.new(master_key.encode(), f"llmq-webhook:{salt}".encode(), hashlib.sha256)
    return SECRET_PREFIX + base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The signature header value for `body` sent at `timestamp` (now by default)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return f"t={ts},v1={_mac(secret, ts, body)}"


def verify(
    secret: str,
    header: str,
    body: bytes,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Check a signature header; returns its timestamp or raises SignatureError."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(name, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        raise SignatureError("no timestamp in the signature header") from None
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise SignatureError("timestamp outside the tolerance (replayed or clock skew)")
    expected = _mac(secret, timestamp, body)
    # Several v1 values may be present while a secret is rotated; any match is enough.
    if not any(hmac.compare_digest(expected, given) for given in parts.get("v1", [])):
        raise SignatureError("signature does not match the body")
    return timestamp


def backoff_s(attempt_no: int, base_s: float, cap_s: float) -> float:
    """Delay before attempt `attempt_no + 1`: base, 2x base, 4x base ... capped."""
    return float(min(cap_s, base_s * 2 ** (attempt_no - 1)))


def payload(event_id: str, batch: dict[str, Any]) -> bytes:
    """The body a receiver gets: the same event id on every redelivery, for deduplication."""
    return json.dumps(
        {"id": event_id, "type": "batch.completed", "created": int(time.time()), "data": batch},
        separators=(",", ":"),
        default=str,
    ).encode()


@dataclass(frozen=True)
class DeliveryResult:
    delivered: bool
    http_status: int | None
    error: str | None
    latency_ms: float
    retryable: bool = True  # False: another attempt would fail the same way


def post(url: str, body: bytes, secret: str, event_id: str, timeout_s: float) -> DeliveryResult:
    """One POST; any 2xx is a delivery. Redirects are not followed (the signed URL is final)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "llmq-webhooks/1",
        SIGNATURE_HEADER: sign(secret, body),
        EVENT_ID_HEADER: event_id,
    }
    started = time.perf_counter()
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        latency = (time.perf_counter() - started) * 1000
        return DeliveryResult(False, None, f"{type(exc).__name__}: {exc}"[:500], latency)
    latency = (time.perf_counter() - started) * 1000
    ok = 200 <= response.status_code < 300
    error = None if ok else f"HTTP {response.status_code}"
    return DeliveryResult(ok, response.status_code, error, latency)


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def batch_snapshot(engine: Engine, tenant_id: uuid.UUID, batch_id: str) -> dict[str, Any]:
    batch = store.get_batch(engine, tenant_id, uuid.UUID(batch_id)) or {}
    return json.loads(json.dumps(batch, default=_json_default))


def deliver_attempt(engine: Engine, settings: Settings, batch_id: str, attempt_no: int) -> str:
    """Make delivery attempt `attempt_no` of a batch's completion event and record it."""
    lease_s = settings.webhook_timeout_s + 30
    claim = store.claim_webhook_attempt(engine, batch_id, attempt_no, lease_s)
    if claim is None:
        return "not_claimable"  # a duplicate message, or already delivered
    try:
        result = _send(engine, settings, batch_id, claim)
    except Exception as exc:
        # Any error is this attempt's failure, recorded like a refused POST: left unrecorded,
        # the attempt would come due again after its lease, without end (issue 14).
        log.exception("webhook for batch %s attempt %d crashed", batch_id, attempt_no)
        result = DeliveryResult(False, None, f"{type(exc).__name__}: {exc}"[:500], 0.0)
    more = result.retryable and not result.delivered and attempt_no < settings.webhook_max_attempts
    base, cap = settings.webhook_backoff_base_s, settings.webhook_backoff_cap_s
    store.record_webhook_delivery(
        engine,
        batch_id,
        attempt_no,
        claim,
        outcome="delivered" if result.delivered else "failed",
        http_status=result.http_status,
        error=result.error,
        latency_ms=round(result.latency_ms, 3),
        retry_in_s=backoff_s(attempt_no, base, cap) if more else None,
    )
    if not result.delivered:
        log.info("webhook for batch %s attempt %d failed: %s", batch_id, attempt_no, result.error)
    return "delivered" if result.delivered else "failed"


def _send(
    engine: Engine, settings: Settings, batch_id: str, claim: store.WebhookClaim
) -> DeliveryResult:
    """One POST of the event, or why none is made. Refusals are not retried: the tenant must fix
    the URL (or the operator configure a key or allow private networks)."""
    salt = store.get_webhook_salt(engine, claim.tenant_id)
    if salt is None or settings.webhook_signing_key is None:
        return DeliveryResult(False, None, "no webhook signing secret is configured", 0.0, False)
    problem = url_problem(claim.url)  # a URL stored before submissions were checked
    if problem is None and not settings.webhook_allow_private:
        problem = destination_refusal(claim.url)
        problem = f"destination refused: {problem}" if problem is not None else None
    if problem is not None:
        return DeliveryResult(False, None, problem, 0.0, False)
    secret = derive_secret(settings.webhook_signing_key.get_secret_value(), salt)
    body = payload(str(claim.event_id), batch_snapshot(engine, claim.tenant_id, batch_id))
    return post(claim.url, body, secret, str(claim.event_id), settings.webhook_timeout_s)
