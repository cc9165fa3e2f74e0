"""POST /v1/webhooks/secret (create or rotate; shown once) and GET /v1/batches/{id}/webhooks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from llmq import store
from llmq.webhooks.delivery import SIGNATURE_HEADER, derive_secret, new_salt

from ..deps import EngineDep, PrincipalDep, SettingsDep
from ..errors import ApiError
from ..schemas import ErrorOut, WebhookDeliveriesOut, WebhookDeliveryOut, WebhookSecretOut
from .batches import batch_extras
from .jobs import parse_id

router = APIRouter(tags=["webhooks"])
ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorOut}, 404: {"model": ErrorOut}}


@router.post(
    "/v1/webhooks/secret",
    status_code=201,
    response_model=WebhookSecretOut,
    responses={**ERRORS, 422: {"model": ErrorOut}},
)
def create_webhook_secret(
    engine: EngineDep, settings: SettingsDep, who: PrincipalDep
) -> WebhookSecretOut:
    """A new signing secret for this tenant's webhooks (the previous one stops working).
    It is shown only in this response: store it where your receiver can read it."""
    if settings.webhook_signing_key is None:
        raise ApiError(
            422, "webhooks_disabled", "webhooks are disabled: set LLMQ_WEBHOOK_SIGNING_KEY"
        )
    salt = new_salt()
    store.set_webhook_salt(engine, who.tenant_id, salt, actor=str(who.key_id))
    return WebhookSecretOut(
        secret=derive_secret(settings.webhook_signing_key.get_secret_value(), salt),
        header=SIGNATURE_HEADER,
        note="shown once; verify t=<ts>,v1=<hex HMAC-SHA256(secret, '<ts>.<raw body>')>",
    )


@router.get(
    "/v1/batches/{batch_id}/webhooks", response_model=WebhookDeliveriesOut, responses=ERRORS
)
def batch_webhooks(batch_id: str, engine: EngineDep, who: PrincipalDep) -> WebhookDeliveriesOut:
    """The batch's webhook state and every delivery attempt, failures included."""
    batch_uuid = parse_id(batch_id, "batch")
    extras = store.get_batch_extras(engine, who.tenant_id, batch_uuid)
    if extras is None:
        raise ApiError(404, "not_found", f"batch {batch_id} not found")
    deliveries = [
        WebhookDeliveryOut.model_validate(
            {**d, "event_id": str(d["event_id"]), "latency_ms": float(d["latency_ms"])}
        )
        for d in store.list_webhook_deliveries(engine, batch_uuid)
    ]
    return WebhookDeliveriesOut(
        batch_id=str(batch_uuid), webhook=batch_extras(extras)["webhook"], deliveries=deliveries
    )
