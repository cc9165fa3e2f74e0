"""A batch's completion webhook is admitted only if a delivery could ever succeed: the server
signs deliveries, the tenant has a secret, and the URL is a usable public destination."""

from __future__ import annotations

from collections.abc import Callable

from llmq.settings import Settings
from llmq.webhooks.destinations import literal_refusal, url_problem

from .errors import AdmissionError


def check_webhook(url: str, settings: Settings, has_secret: Callable[[], bool]) -> None:
    """422 unless deliveries to `url` can be signed and sent. `has_secret` is asked only when
    the server has a signing key (it costs a query)."""
    if settings.webhook_signing_key is None or not has_secret():
        raise AdmissionError(
            422,
            "webhook_secret_missing",
            "webhook_url needs a signing secret: create one with POST /v1/webhooks/secret"
            if settings.webhook_signing_key
            else "webhooks are disabled: the server has no LLMQ_WEBHOOK_SIGNING_KEY",
        )
    _check_url(url, settings)


def _check_url(url: str, settings: Settings) -> None:
    """A 422 for a webhook URL no delivery could use. The destination is judged first, so
    127.0.0.1 in any spelling (0177.0.0.1, which httpx cannot even parse, included) gets the
    same answer."""
    refusal = None if settings.webhook_allow_private else literal_refusal(url)
    if refusal is not None:
        raise AdmissionError(
            422,
            "webhook_destination_refused",
            f"webhook_url is refused: {refusal} (deliveries go to public addresses only)",
        )
    problem = url_problem(url)
    if problem is not None:
        raise AdmissionError(422, "invalid_webhook_url", problem)
