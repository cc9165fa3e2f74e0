"""All configuration, from the environment (and an optional `.env`).

Provider credentials use the names their SDKs already use (OPENAI_API_KEY, ...); the service
URLs use the conventional DATABASE_URL / REDIS_URL; everything else is prefixed LLMQ_.
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

QUEUES = ("llm.high", "llm.default", "llm.low")
PRIORITY_TO_QUEUE = {"high": "llm.high", "default": "llm.default", "low": "llm.low"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LLMQ_", env_file=".env", extra="ignore", populate_by_name=True
    )

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
    default_chain: list[str] = [
        "openai:gpt-4o-mini",
        "anthropic:claude-haiku-4-5",
        "local:extractive",
    ]
    provider_connect_timeout_s: float = 5.0
    provider_read_timeout_s: float = 60.0
    max_output_tokens: int = 512

    # Retry policy (see llmq/retry.py for the formula).
    retry_max_attempts: int = 3
    retry_base_s: float = 0.5
    retry_cap_s: float = 20.0
    retry_inline_max_s: float = 2.0

    # Circuit breaker per provider:model, shared through Redis (llmq/circuit.py).
    circuit_failure_threshold: int = 5
    circuit_window_s: float = 30.0
    circuit_cooldown_s: float = 30.0

    # Shared provider limits per window: {"openai:gpt-4o-mini": {"requests": 500, "tokens": 2e5}}
    rate_limits: dict[str, dict[str, int]] = {}
    rate_window_s: float = 60.0

    # Guardrails, by name (llmq/guardrails/__init__.py).
    input_guardrails: list[str] = ["prompt_injection", "pii", "banned_terms"]
    output_guardrails: list[str] = ["empty_output", "unsafe_output"]
    banned_terms: list[str] = []

    # Cache.
    cache_ttl_s: int = 86_400

    # Jobs and workers.
    job_lease_s: float = 60.0
    job_deadline_s: float = 600.0
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

    # Cost and budgets (llmq/budgets.py). The Redis copy of each budget's spend is re-read from
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
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
