"""All configuration: the environment, an optional `.env`, an optional `llmq.toml`.

Provider credentials use the names their SDKs already use (OPENAI_API_KEY, ...); the service
URLs use the conventional DATABASE_URL / REDIS_URL; everything else is prefixed LLMQ_. The TOML
file (LLMQ_CONFIG, else ./llmq.toml if it exists) takes the same settings by field name, with
tables where the environment needs JSON. Precedence: arguments > environment > .env > TOML >
defaults.

Nearly a leaf: it imports only llmq.errors (itself a leaf), so every module can read settings
without a cycle.
Checks that need other modules (a template version that must exist, a provider name) live in
llmq/config_check.py.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tomllib
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from llmq.errors import UserError

QUEUES = ("llm.high", "llm.default", "llm.low")
PRIORITY_TO_QUEUE = {"high": "llm.high", "default": "llm.default", "low": "llm.low"}
# A list setting given as "a,b,c" or as a JSON list. NoDecode: pydantic-settings would otherwise
# json-decode the environment value before the validator sees it, and reject "a,b,c".
CsvList = Annotated[list[str], NoDecode]
# Who shares a cached answer (llmq/execution/cache.py): each tenant its own, or every tenant.
CacheScope = Literal["tenant", "global"]
# The TOML file: named by this variable, else DEFAULT_CONFIG_FILE in the working directory.
CONFIG_FILE_VAR = "LLMQ_CONFIG"
DEFAULT_CONFIG_FILE = Path("llmq.toml")


class ConfigFileError(UserError, ValueError):
    """The TOML file is missing, is not TOML, or names settings that do not exist. Its message
    is one line per problem."""


def config_file() -> Path | None:
    """The TOML file settings are read from: LLMQ_CONFIG, else ./llmq.toml if it exists."""
    named = os.environ.get(CONFIG_FILE_VAR)
    if named:
        return Path(named)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LLMQ_", env_file=".env", extra="ignore", populate_by_name=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # A subclass made by `settings_from_file` names its file; otherwise LLMQ_CONFIG decides.
        path = settings_cls.model_config.get("toml_file") or config_file()
        if path is None:
            return init_settings, env_settings, dotenv_settings, file_secret_settings
        toml = _toml_source(settings_cls, Path(str(path)))
        return init_settings, env_settings, dotenv_settings, toml, file_secret_settings

    # Services. Unset means "start the embedded servers" (llmq up / demo / tests).
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "LLMQ_DATABASE_URL")
    )
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "LLMQ_REDIS_URL")
    )
    data_dir: Path = Path(".llmq")

    # Providers.
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "LLMQ_OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "LLMQ_OPENAI_BASE_URL")
    )
    anthropic_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("ANTHROPIC_API_KEY", "LLMQ_ANTHROPIC_API_KEY"),
    )
    anthropic_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("ANTHROPIC_BASE_URL", "LLMQ_ANTHROPIC_BASE_URL"),
    )
    default_chain: CsvList = [
        "openai:gpt-4o-mini",
        "anthropic:claude-haiku-4-5",
        "local:extractive",
    ]
    provider_connect_timeout_s: float = 5.0
    provider_read_timeout_s: float = 60.0
    max_output_tokens: int = 512

    # Retry policy (see llmq/resilience/retry.py for the formula).
    retry_max_attempts: int = 3
    retry_base_s: float = 0.5
    retry_cap_s: float = 20.0
    retry_inline_max_s: float = 2.0

    # Circuit breaker per provider:model, shared through Redis (llmq/resilience/circuit.py).
    circuit_failure_threshold: int = 5
    circuit_window_s: float = 30.0
    circuit_cooldown_s: float = 30.0
    circuit_failure_rate: float = 0.5
    circuit_min_calls: int = 50

    # Shared provider limits per window: {"openai:gpt-4o-mini": {"requests": 500, "tokens": 2e5}}
    rate_limits: dict[str, dict[str, int]] = {}
    rate_window_s: float = 60.0
    # Learn each provider:model's limits from its rate-limit headers and pace calls to just under
    # them (rate_limits stays a ceiling); the margin is the share of the limit left unused.
    adaptive_rate_limits: bool = True
    rate_limit_margin: float = Field(default=0.03, ge=0.0, lt=1.0)
    # The longest a worker sleeps on a reserved slot under a rate limit; longer, the job is
    # handed back to the queue (and comes back when there is room).
    rate_wait_max_s: float = Field(default=10.0, ge=0.0)

    # Guardrails, by name (llmq/guardrails/__init__.py).
    input_guardrails: CsvList = ["prompt_injection", "pii", "banned_terms"]
    output_guardrails: CsvList = ["empty_output", "unsafe_output"]
    banned_terms: CsvList = []

    # Cache.
    cache_ttl_s: int = 86_400
    # "tenant": a tenant never gets (or waits for) another tenant's answer, which would tell it
    # that someone else asked the same; "global" shares answers (keys as before the scope).
    cache_scope: CacheScope = "tenant"

    # Jobs and workers.
    job_lease_s: float = 60.0
    job_deadline_s: float = 600.0
    # Longest SQL statement (0 = no limit): a lock held by a stuck session, or a runaway query,
    # ends in an error (API 503, worker retry) instead of holding a request or a slot forever.
    db_statement_timeout_s: float = 60.0
    # Connections per process: pool + overflow. 0 = the worker's slots (its --concurrency, or 1
    # per process under prefork) + 5 for its own threads (lease keeper, reconciler, ...).
    db_pool_size: int = 0
    db_max_overflow: int = 10
    # psycopg's server-side prepared statements; off behind PgBouncer < 1.21 in transaction mode.
    db_prepared_statements: bool = True
    # How long a worker retries a write that records a paid call or ends a job while Postgres
    # refuses connections, before parking the call in Redis and handing the job on.
    db_retry_s: float = 30.0
    max_deliveries: int = 3
    worker_concurrency: int = 100
    worker_pool: str = "threads"
    task_events: bool = False
    reconcile_interval_s: float = 5.0
    dispatch_grace_s: float = 10.0
    redispatch_after_s: float = 120.0

    # API.
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    max_batch_items: int = 50_000

    # Flower.
    flower_port: int = 5555
    flower_user: str = "admin"
    flower_password: SecretStr | None = None

    # Pricing override file (JSON with the same shape as llmq/data/pricing.json).
    pricing_file: Path | None = None

    # OpenAI/Anthropic-compatible surfaces (llmq/api/routes/compat_*.py).
    compat_max_file_bytes: int = 100_000_000  # a batch input file (OpenAI allows 200 MB)
    compat_sync_timeout_s: float = 120.0  # POST /openai/v1/chat/completions waits this long
    # Batch API (issue 5): live events, completion webhooks.
    # SSE streams re-read Postgres at least this often, so a lost notification costs a delay.
    events_snapshot_interval_s: float = 2.0
    events_keepalive_s: float = 15.0
    # Master key the per-tenant webhook secrets are derived from (never stored in the DB).
    webhook_signing_key: SecretStr | None = None
    # Encryption at rest (docs/security.md): Fernet keys, newest first ("k1,k2" or a JSON list).
    # Empty: texts are stored in clear. Read through llmq/store/crypto.py only.
    encryption_keys: Annotated[list[SecretStr], NoDecode] = []
    webhook_timeout_s: float = 10.0
    webhook_max_attempts: int = 6
    webhook_backoff_base_s: float = 10.0
    webhook_backoff_cap_s: float = 3600.0
    # Webhooks may go to loopback/private/link-local addresses (llmq/webhooks/destinations.py).
    webhook_allow_private: bool = False
    # An Idempotency-Key is remembered this long; then it may be used for a new submission.
    idempotency_ttl_s: float = 86_400.0
    # Provider Batch lane (docs/batches.md): lane jobs are uploaded per provider:model once this
    # many wait (capped by the provider's own limits) or the oldest waited this long.
    batch_lane_max_items: int = 50_000
    batch_lane_max_age_s: float = 300.0
    # The lane's runner (a thread in every worker) looks this often; upstream batches are polled
    # first after batch_lane_poll_s, then with doubling waits up to batch_lane_poll_max_s.
    batch_lane_interval_s: float = 2.0
    batch_lane_poll_s: float = 15.0
    batch_lane_poll_max_s: float = 300.0
    # The lane the OpenAI-/Anthropic-compatible batch endpoints use: sync | provider_batch.
    compat_lane: Literal["sync", "provider_batch"] = "sync"
    # Long documents (llmq/longdocs/mapreduce.py): a summarizing job whose document has more tokens
    # than this (or than its chain's smallest context window leaves room for) is split into chunk
    # jobs and reduced. 0: split only what does not fit the context windows.
    chunk_tokens: int = Field(default=8000, ge=0)
    chunk_overlap_tokens: int = Field(default=200, ge=0)
    # Prompt-template A/B experiments: {"summarize": {"version": 2, "percent": 10}}.
    template_experiments: dict[str, dict[str, float]] = {}

    @field_validator("template_experiments")
    @classmethod
    def _experiment_shape(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        # That the version exists is checked at start, by llmq.config_check.check_references.
        for name, spec in value.items():
            if set(spec) != {"version", "percent"} or not 0 <= spec["percent"] <= 100:
                raise ValueError(f"{name}: give {{'version': N, 'percent': 0..100}}, got {spec}")
        return value

    # Shadow runs (docs/evals.md): {"summarize": {"version": 3, "chain": ["openai:gpt-5-nano"],
    # "percent": 20}} re-runs that share of the template's succeeded jobs on the low queue and logs
    # both answers to eval_log; "judge": "provider:model" also has each pair scored by that model.
    # Checked in full (links, versions) by llmq.config_check.
    template_shadow: dict[str, dict[str, Any]] = {}

    @field_validator("template_shadow")
    @classmethod
    def _shadow_shape(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, spec in value.items():
            if not isinstance(spec.get("chain"), list) or not set(spec) <= {
                "version", "chain", "percent", "judge"
            }:  # fmt: skip
                raise ValueError(
                    f"{name}: give {{'version': N, 'chain': ['provider:model', ...], "
                    f"'percent': 0..100, 'judge': 'provider:model' (optional)}}, got {spec}"
                )
        return value

    # Size-based routing per template name (llmq/execution/routing.py), overriding the template's
    # own: {"summarize": {"link": "openai:gpt-5-nano", "max_input_tokens": 400}}; null turns it off.
    # Template names and routes are checked at start, by llmq.config_check.check_references.
    template_short_input: dict[str, dict[str, Any] | None] = {}

    # Cache: identical jobs in flight at once are computed once (llmq/execution/dedup.py).
    cache_dedup: bool = True

    # Semantic cache (llmq/execution/semantic_cache.py, docs/cache.md): a reworded question gets
    # an earlier answer. Off unless enabled; needs pgvector in the database.
    semantic_cache: bool = False
    semantic_cache_threshold: float = Field(default=0.95, gt=0, le=1)  # cosine similarity
    semantic_cache_ttl_s: int = Field(default=86_400, ge=1)
    semantic_cache_embedding: str = "openai:text-embedding-3-small"
    # Default: OPENAI_BASE_URL / OPENAI_API_KEY (any OpenAI-compatible embeddings server).
    semantic_cache_base_url: str | None = None
    semantic_cache_api_key: SecretStr | None = None
    # Per template name: a threshold, or false. Summarizing templates are off unless named here.
    # Names and the embedding link are checked at start, by llmq.config_check.check_references.
    semantic_cache_templates: dict[str, float | bool] = {}

    @field_validator("semantic_cache_templates")
    @classmethod
    def _thresholds(cls, value: dict[str, float | bool]) -> dict[str, float | bool]:
        for name, setting in value.items():
            if not isinstance(setting, bool) and not 0 < setting <= 1:
                raise ValueError(f"{name}: give a threshold in (0, 1], true or false")
        return value

    # Observability (docs/observability.md): logs, metrics, tracing, worker heartbeats.
    log_format: str = "json"  # json | text
    log_level: str = "INFO"
    worker_metrics_port: int = 0  # each worker process serves /metrics here; 0 = off
    worker_metrics_host: str = "127.0.0.1"
    metrics_cache_s: float = 5.0  # scrape-time Postgres/Redis figures are reused this long
    tracing: str = "off"  # off | console | otlp (needs `pip install llmq[otel]`)
    worker_heartbeat_s: float = 5.0  # a worker is live while its key (TTL 3x this) exists

    # Security (llmq/api/limits.py, llmq/api/key_limits.py). Per-key limits: 0 = unlimited; a key's
    # own limits (POST /v1/admin/keys) override these defaults. Shared by every API instance
    # (Redis).
    key_requests_per_min: int = 600
    key_items_per_min: int = 100_000
    max_body_bytes: int = 64 * 1024 * 1024
    # Browser origins allowed to call the API; empty = CORS off (no CORS headers at all).
    cors_origins: list[str] = []

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    # Cost and budgets (llmq/cost/budgets.py). The Redis copy of each budget's spend is re-read from
    # Postgres this often; budget changes reach workers within budget_cache_s.
    budget_reconcile_s: float = 30.0
    budget_cache_s: float = 5.0
    budget_soft_fraction: Decimal = Decimal("0.8")

    @field_validator(
        "default_chain", "input_guardrails", "output_guardrails", "banned_terms", mode="before"
    )
    @classmethod
    def _split_csv(cls, value: object) -> object:
        # Accept "a,b,c" from the environment as well as JSON lists.
        if isinstance(value, str) and not value.strip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, str):
            return json.loads(value)
        return value

    # Guardrails: ingest redaction, plugins, size limits, output review (llmq/guardrails/,
    # llmq/execution/output_review.py).
    # Redact personal data in the API, before the job row is written (and so before any log).
    redact_pii_at_ingest: bool = True
    # Modules imported at start that call llmq.guardrails.register_guardrail.
    guardrail_plugins: CsvList = []
    # Per-template input budget in tokens, overriding the template's own: {"prompt": 8000}.
    template_max_input_tokens: dict[str, int] = {}
    # A truncated answer (finish_reason length) is retried once with twice the max_tokens, up
    # to this; a job that set max_tokens itself keeps its cap and fails `truncated_output`.
    truncation_retry_max_tokens: int = 4096

    @field_validator("guardrail_plugins", mode="before")
    @classmethod
    def _split_plugins(cls, value: object) -> object:
        return cls._split_csv(value)

    @field_validator("encryption_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        return [] if value == "" else cls._split_csv(value)

    @field_validator("encryption_keys")
    @classmethod
    def _fernet_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        # Checked here so a bad key stops every process at start; the message never shows a key.
        for position, key in enumerate(value, start=1):
            try:
                raw = base64.urlsafe_b64decode(key.get_secret_value().encode())
            except (ValueError, binascii.Error):
                raw = b""
            if len(raw) != 32:
                raise ValueError(
                    f"key {position} is not a Fernet key (32 url-safe base64 bytes; "
                    "`llmq keys new-encryption-key` prints one)"
                )
        return value

    @field_validator("webhook_signing_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # docker-compose passes unset variables as "": that means webhooks off, not a key "".
        return None if value == "" else value


def _toml_source(settings_cls: type[BaseSettings], path: Path) -> TomlConfigSettingsSource:
    """The file's settings; a missing file, bad TOML or an unknown name is a ConfigFileError
    (extra="ignore" suits the environment, full of other programs' variables, not our file)."""
    if not path.is_file():
        raise ConfigFileError(f"{path}: no such configuration file ({CONFIG_FILE_VAR})")
    try:
        source = TomlConfigSettingsSource(settings_cls, toml_file=path)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}") from None
    known = set()
    for name, info in settings_cls.model_fields.items():
        known.add(name)
        if isinstance(info.validation_alias, AliasChoices):
            known.update(str(choice) for choice in info.validation_alias.choices)
    unknown = sorted(set(source.toml_data) - known)
    if unknown:
        raise ConfigFileError("\n".join(f"{path}: unknown setting {name!r}" for name in unknown))
    return source


def settings_from_file(path: Path) -> Settings:
    """The settings with `path` as the TOML file, whatever LLMQ_CONFIG says (`llmq config
    check --file`)."""

    class FileSettings(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})

    return FileSettings()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
