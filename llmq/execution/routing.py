"""Size-based routing: a short input may go to a cheaper model first.

A template (or the operator, per template, in `LLMQ_TEMPLATE_SHORT_INPUT`, or the request itself
in `params.short_input`) names a short-input route: a `provider:model` link and a threshold in
estimated input tokens. The API resolves which route applies to a job and stores it in the job's
params, so the worker needs no settings and the job row shows the policy it ran under. The
worker then decides per job, from the input it actually sends (after redaction), with the same
pure function the API's budget estimate uses.

The cheaper link is tried first and the job's chain stays behind it as the fallback, so a short
input never fails for want of the cheap model. A job that names its own chain or model is not
re-routed (unless the request also names a route): what a client asked for explicitly wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from llmq.chat import effective_chain
from llmq.providers.links import parse_link

PARAM = "short_input"  # the job param that carries the route (not part of the cache key)
ROUTED = "short_input"  # the route entry's `routed` value


@dataclass(frozen=True)
class ShortInputRoute:
    """Inputs of at most `max_input_tokens` estimated tokens try `link` first."""

    link: str
    max_input_tokens: int

    def __post_init__(self) -> None:
        problem = check_route(self.link, self.max_input_tokens)
        if problem is not None:
            raise ValueError(problem)

    def as_param(self) -> dict[str, Any]:
        return {"link": self.link, "max_input_tokens": self.max_input_tokens}

    @classmethod
    def parse(cls, value: object) -> ShortInputRoute:
        """From its JSON form ({"link": ..., "max_input_tokens": N}); ValueError if malformed."""
        if not isinstance(value, Mapping) or set(value) != {"link", "max_input_tokens"}:
            raise ValueError(
                'a short-input route is {"link": "provider:model", "max_input_tokens": N}, '
                f"got {value!r}"
            )
        return cls(value["link"], value["max_input_tokens"])


def check_route(link: object, max_input_tokens: object) -> str | None:
    """What is wrong with a route (a message fit for a 422), or None."""
    if not isinstance(link, str):
        return f"short-input link must be a 'provider:model' string, got {link!r}"
    try:
        parse_link(link)
    except ValueError as exc:
        return f"short-input {exc}"
    # bool is an int in Python; a threshold of True is a typo, not 1 token.
    if not isinstance(max_input_tokens, int) or isinstance(max_input_tokens, bool):
        return f"short-input max_input_tokens must be an integer, got {max_input_tokens!r}"
    if max_input_tokens <= 0:
        return f"short-input max_input_tokens must be positive, got {max_input_tokens}"
    return None


def route_for(
    own: ShortInputRoute | None,
    configured: Mapping[str, Any] | None,
    has_override: bool,
    *,
    requested: ShortInputRoute | None,
    explicit_chain: bool,
) -> ShortInputRoute | None:
    """The route a submitted job gets. The request's own route wins; otherwise a job that named
    its chain keeps it; otherwise the operator's setting for the template (`has_override`, a
    None value switches the template's route off), else the template's own."""
    if requested is not None:
        return requested
    if explicit_chain:
        return None
    if has_override:
        return None if configured is None else ShortInputRoute.parse(configured)
    return own


_R = TypeVar("_R")


@dataclass(frozen=True)
class ChainChoice:
    """The links a job tries, in order, and the route entry saying why, when it was re-routed."""

    links: list[str]
    note: dict[str, Any] | None = None

    def noted(self, result: _R) -> _R:
        """`result` (an Outcome or a Deferred) with the routing entry leading its route."""
        if self.note is None:
            return result
        return replace(result, route=[self.note, *(getattr(result, "route", None) or [])])  # type: ignore[type-var]


def choose_chain(chain: Sequence[str], params: Mapping[str, Any], input_tokens: int) -> ChainChoice:
    """The chain a job runs with: the short-input link first when the job carries a route and
    its input is at most the route's threshold, else its chain (after the model it named)."""
    links = effective_chain(chain, dict(params))
    raw = params.get(PARAM)
    model = params.get("model")
    if raw is None or (isinstance(model, str) and model):
        return ChainChoice(links)  # no route, or the job named its model: that goes first
    try:
        route = ShortInputRoute.parse(raw)
    except ValueError:
        return ChainChoice(links)  # the API validates it; a hand-written row is not a crash
    if input_tokens > route.max_input_tokens or links[:1] == [route.link]:
        return ChainChoice(links)
    note = {
        "routed": ROUTED,
        "link": route.link,
        "input_tokens": input_tokens,
        "max_input_tokens": route.max_input_tokens,
    }
    return ChainChoice([route.link, *(link for link in links if link != route.link)], note)
