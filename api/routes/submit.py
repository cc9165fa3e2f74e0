"""Shared submission checks: template, style and chain resolved before anything is written."""

from __future__ import annotations

import logging
from collections.abc import Callable

from llmq.settings import Settings
from llmq.templates import Template, TemplateError, get_template

from ..errors import ApiError
from ..schemas import Params

log = logging.getLogger(__name__)


def resolve_template(name: str, params: list[Params]) -> Template:
    try:
        template = get_template(name)
        for p in params:
            template.render("", p.model_dump(exclude_none=True))
    except TemplateError as exc:
        raise ApiError(422, "invalid_template", str(exc)) from exc
    return template


def resolve_chain(chain: list[str] | None, settings: Settings) -> list[str]:
    return list(chain) if chain else list(settings.default_chain)


def publish_quietly(action: Callable[[], None], what: str) -> bool:
    """Publish now if the broker is up; if not, the job is durable and the reconciler will."""
    try:
        action()
        return True
    except Exception as exc:  # kombu raises several unrelated types for a dead broker
        log.warning("could not publish %s now (%s); the reconciler will", what, type(exc).__name__)
        return False
