"""The cache key's scope (LLMQ_CACHE_SCOPE): per tenant by default, shared only when asked."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from llmq.execution.cache import cache_key
from llmq.settings import CacheScope, Settings
from llmq.workers.runtime import pipeline_config

CHAIN = ["openai:gpt-4o-mini"]
PROMPT = {"system": None, "user": "What is 2+2?"}
PARAMS = {"temperature": 0}
A, B = uuid.UUID(int=1), uuid.UUID(int=2)
# The key of this question before the scope existed: `global` must keep it, so an operator who
# opts in keeps the answers already cached.
PRE_SCOPE_KEY = "llmq:cache:eb6c1c76253ff0be37cb3d8d59fbc199b0af06e8bd6353246ec9f8957aa8ed29"


def _key(scope: CacheScope, tenant: uuid.UUID | str, **changes: Any) -> str:
    fields: dict[str, Any] = {"chain": CHAIN, "template": "prompt", "version": 1,
                              "rendered": PROMPT, "params": PARAMS, **changes}  # fmt: skip
    return cache_key(**fields, scope=scope, tenant_id=tenant)


def test_under_the_tenant_scope_tenants_get_different_keys() -> None:
    assert _key("tenant", A) != _key("tenant", B)
    assert _key("tenant", A) == _key("tenant", A)
    assert _key("tenant", A) == _key("tenant", str(A))  # the job row's UUID or its text
    assert _key("tenant", A) != PRE_SCOPE_KEY
    # The tenant is one more part of the question; the others still tell questions apart.
    assert _key("tenant", A) != _key("tenant", A, params={"temperature": 1})
    assert _key("tenant", A) != _key("tenant", A, chain=["anthropic:claude-haiku-4-5"])


def test_under_the_global_scope_tenants_share_the_pre_scope_key() -> None:
    assert _key("global", A) == _key("global", B) == PRE_SCOPE_KEY
    assert _key("global", A, params={"temperature": 1}) != PRE_SCOPE_KEY


def test_the_de_dup_lock_follows_the_key() -> None:
    # llmq/execution/dedup.py locks on the key's digest: per tenant exactly when the key is.
    def digest(scope: CacheScope, tenant: uuid.UUID) -> str:
        return _key(scope, tenant).rsplit(":", 1)[-1]

    assert digest("tenant", A) != digest("tenant", B)
    assert digest("global", A) == digest("global", B)


def test_an_unknown_scope_is_refused_rather_than_shared() -> None:
    with pytest.raises(ValueError, match="unknown cache scope"):
        _key("everyone", A)  # type: ignore[arg-type]


def test_the_setting_defaults_to_tenant_and_refuses_other_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LLMQ_CACHE_SCOPE", raising=False)
    assert Settings().cache_scope == "tenant"
    monkeypatch.setenv("LLMQ_CACHE_SCOPE", "global")
    assert Settings().cache_scope == "global"
    monkeypatch.setenv("LLMQ_CACHE_SCOPE", "per-tenant")
    with pytest.raises(ValidationError, match="cache_scope"):
        Settings()


@pytest.mark.parametrize("scope", ["tenant", "global"])
def test_the_worker_pipeline_gets_the_scope(scope: CacheScope) -> None:
    assert pipeline_config(Settings(cache_scope=scope)).cache_scope == scope
