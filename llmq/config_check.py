"""Configuration checks that need more than the settings module, and their report.

`llmq/settings.py` is a leaf: it validates types and shapes only. What must also agree with the
rest of llmq (an A/B experiment's template version, a short-input route's template and provider)
is checked here, by the API at start (`check_references`) and by `llmq config check`, which also
prints the effective settings with every secret masked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from llmq.errors import UserError
from llmq.evals.spec import ShadowSpec
from llmq.execution.routing import ShortInputRoute
from llmq.providers.links import parse_link
from llmq.settings import ConfigFileError, Settings, settings_from_file
from llmq.templates import TemplateError, get_family, get_template

MASK = "********"
# Setting names whose string values are credentials, whatever their type says.
SECRET_NAME = re.compile(r"key|password|secret", re.IGNORECASE)


class ConfigError(UserError):
    """Invalid configuration; the message is one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_settings(toml_file: Path | None = None) -> Settings:
    """The settings a process would start with (environment, .env, TOML file), checked in
    full; ConfigError naming every problem otherwise."""
    try:
        settings = Settings() if toml_file is None else settings_from_file(toml_file)
    except (ValidationError, ConfigFileError) as exc:
        raise ConfigError(describe(exc)) from None
    check_references(settings)
    return settings


def describe(exc: ValidationError | ConfigFileError) -> list[str]:
    """One line per problem. A ValidationError's input is left out: it may be a secret."""
    if isinstance(exc, ConfigFileError):
        return str(exc).splitlines()
    return [
        f"{_where(error['loc'])}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)
    ]


def _where(loc: tuple[int | str, ...]) -> str:
    """A problem's setting, with its environment variable: `api_port (LLMQ_API_PORT)`."""
    path = ".".join(str(part) for part in loc) or "settings"
    field = Settings.model_fields.get(str(loc[0])) if loc else None
    if field is None:  # reached by an alias (DATABASE_URL) or not a field at all
        return path
    return f"{path} ({Settings.model_config.get('env_prefix', '')}{str(loc[0]).upper()})"


def check_references(settings: Settings) -> None:
    """Raise ConfigError if a setting names a template, version or provider llmq lacks."""
    problems = reference_problems(settings)
    if problems:
        raise ConfigError(problems)


def reference_problems(settings: Settings) -> list[str]:
    problems = []
    for name, spec in settings.template_experiments.items():
        try:
            get_template(name, int(spec["version"]))
        except TemplateError as exc:
            problems.append(f"template_experiments[{name!r}]: {exc}")
    for name, raw in settings.template_shadow.items():
        try:
            shadow = ShadowSpec.parse(raw)
            get_template(name, shadow.version)  # the family and, if given, the version exist
        except ValueError as exc:  # TemplateError is a ValueError
            problems.append(f"template_shadow[{name!r}]: {exc}")
    for name, route in settings.template_short_input.items():
        try:
            get_family(name, public=True)
            if route is not None:
                ShortInputRoute.parse(route)
        except ValueError as exc:  # TemplateError is a ValueError
            problems.append(f"template_short_input[{name!r}]: {exc}")
    for name in settings.semantic_cache_templates:
        try:
            get_family(name, public=True)
        except TemplateError as exc:
            problems.append(f"semantic_cache_templates[{name!r}]: {exc}")
    try:
        if parse_link(settings.semantic_cache_embedding).provider != "openai":
            problems.append("semantic_cache_embedding: only openai:<model> (or compatible)")
    except ValueError as exc:
        problems.append(f"semantic_cache_embedding: {exc}")
    return problems


def effective_settings(settings: Settings) -> dict[str, Any]:
    """Every setting as JSON values, secrets masked: SecretStr values, string values of
    settings named like a key, password or secret, and passwords inside URLs."""
    dumped = settings.model_dump(mode="json")
    shown: dict[str, Any] = {}
    for name in type(settings).model_fields:
        raw, value = getattr(settings, name), dumped[name]
        if isinstance(raw, SecretStr) or (isinstance(raw, str) and SECRET_NAME.search(name)):
            shown[name] = MASK
        elif isinstance(raw, list) and any(isinstance(item, SecretStr) for item in raw):
            shown[name] = [MASK for _ in raw]  # the keys' count is useful, never their value
        else:
            shown[name] = _mask_urls(value)
    return shown


def render(settings: Settings) -> str:
    """`name = value` lines, values as JSON, in the settings' own order."""
    return "\n".join(
        f"{name} = {json.dumps(value)}" for name, value in effective_settings(settings).items()
    )


def _mask_urls(value: Any) -> Any:
    if isinstance(value, str):
        return mask_url_password(value)
    if isinstance(value, list):
        return [_mask_urls(item) for item in value]
    if isinstance(value, dict):
        return {key: _mask_urls(item) for key, item in value.items()}
    return value


def mask_url_password(text: str) -> str:
    """`scheme://user:password@host` -> `scheme://user:********@host`. The userinfo ends at the
    last `@`, so an unescaped `@` or `/` in a password is masked too (too much, never too
    little)."""
    scheme, sep, rest = text.partition("://")
    if not sep or "@" not in rest:
        return text
    userinfo, _, host = rest.rpartition("@")
    if ":" not in userinfo:
        return text
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:{MASK}@{host}"
