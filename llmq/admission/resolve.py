"""What a submission runs with: its template version (pinned, default or A/B-assigned), its
chain, and each item's short-input route, all decided before anything is written."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

from llmq.execution import routing
from llmq.settings import Settings
from llmq.templates import (
    Experiment,
    Template,
    TemplateError,
    candidate_versions,
    choose_version,
    get_family,
    get_template,
)

from .errors import AdmissionError


def resolve_template(
    name: str,
    params: Sequence[dict[str, Any]],
    version: int | None = None,
    settings: Settings | None = None,
) -> Template:
    """The pinned (or default) version; the params must suit every version an A/B experiment
    may assign, so a job never fails later for a variable its version lacks."""
    try:
        family = get_family(name, public=True)
        for candidate in candidate_versions(family, version, experiment_for(name, settings)):
            template = get_template(name, candidate)
            for p in params:
                template.render("", p)
        return get_template(name, version)
    except TemplateError as exc:
        raise AdmissionError(422, "invalid_template", str(exc)) from exc


def experiment_for(name: str, settings: Settings | None) -> Experiment | None:
    raw = settings.template_experiments.get(name) if settings else None
    return Experiment(version=int(raw["version"]), percent=float(raw["percent"])) if raw else None


def assign_version(
    template: Template,
    pinned: int | None,
    tenant_id: uuid.UUID,
    custom_id: str | None,
    text: str,
    settings: Settings | None,
) -> int:
    """The version one item runs with: pinned, or the A/B choice by tenant + custom_id (an
    item without a custom_id is keyed by its input, so a resubmission keeps its version)."""
    family = get_family(template.name)
    experiment = experiment_for(template.name, settings)
    if pinned is not None or (experiment or family.experiment) is None:
        return pinned or template.version
    unit = custom_id if custom_id is not None else hashlib.sha256(text.encode()).hexdigest()
    return choose_version(
        family, pinned=None, tenant=str(tenant_id), unit=unit, experiment=experiment
    )


def with_short_input_routes(
    template: Template,
    versions: Sequence[int],
    params: Sequence[dict[str, Any]],
    *,
    explicit_chain: bool,
    settings: Settings | None,
) -> list[dict[str, Any]]:
    """Each item's params with the short-input route its job runs under (llmq/execution/routing.py),
    from the request, else the settings' or the template version's own (not for a chain the request
    named). Items that shared a params object still share one per template version."""
    overrides = settings.template_short_input if settings else {}
    routed: dict[tuple[int, int], dict[str, Any]] = {}
    out = []
    for version, p in zip(versions, params, strict=True):
        if routing.PARAM in p:
            out.append(p)  # the request named its own route (validated by the schema)
            continue
        memo = (id(p), version)
        if memo not in routed:
            route = routing.route_for(
                get_template(template.name, version).short_input,
                overrides.get(template.name),
                template.name in overrides,
                requested=None,
                explicit_chain=explicit_chain,
            )
            routed[memo] = p if route is None else {**p, routing.PARAM: route.as_param()}
        out.append(routed[memo])
    return out


def resolve_chain(chain: Sequence[str] | None, settings: Settings) -> list[str]:
    return list(chain) if chain else list(settings.default_chain)
