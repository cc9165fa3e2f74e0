"""The semantic cache's pure decisions (who may use it, at what threshold, what must match) and
the fake provider's embedding vectors, without servers."""

from __future__ import annotations

import math
import uuid
from dataclasses import replace

import pytest
from pydantic import ValidationError

from llmq.api.schemas import Params
from llmq.execution.semantic_cache import params_hash, scope_of, threshold
from llmq.store.semantic_cache import vector_literal
from llmq.templates import get_template
from llmq.testing.fake_embeddings import embed

PROMPT = get_template("prompt", 1)
SUMMARIZE = get_template("summarize", 1)


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_plain_prompts_are_on_at_the_default_and_summaries_only_when_opted_in() -> None:
    assert threshold(PROMPT, {}, 0.95, {}) == 0.95
    assert threshold(SUMMARIZE, {}, 0.95, {}) is None
    assert threshold(SUMMARIZE, {"semantic_cache": True}, 0.95, {}) == 0.95
    assert threshold(SUMMARIZE, {}, 0.95, {"summarize": 0.99}) == 0.99
    assert threshold(SUMMARIZE, {}, 0.95, {"summarize": True}) == 0.95
    assert threshold(replace(PROMPT, internal=True), {"semantic_cache": 0.9}, 0.95, {}) is None


def test_a_request_sets_its_threshold_or_turns_it_off_but_never_overrides_an_operator_off() -> None:
    assert threshold(PROMPT, {"semantic_cache": 0.8}, 0.95, {}) == 0.8
    assert threshold(PROMPT, {"semantic_cache": 1}, 0.95, {}) == 1.0
    assert threshold(PROMPT, {"semantic_cache": False}, 0.95, {}) is None
    assert threshold(PROMPT, {"semantic_cache": 0.8}, 0.95, {"prompt": 0.99}) == 0.8
    assert threshold(PROMPT, {"semantic_cache": 0.8}, 0.95, {"prompt": False}) is None
    assert threshold(PROMPT, {"semantic_cache": True}, 0.95, {"prompt": 0.9}) == 0.9


@pytest.mark.parametrize("value", [True, False, 0.9, 1, 1.0, 0.01])
def test_the_param_accepts_false_true_or_a_threshold(value: object) -> None:
    assert Params.model_validate({"semantic_cache": value}).semantic_cache == value


@pytest.mark.parametrize("value", [0, 0.0, -0.5, 1.01, 2, "0.9", "yes", [0.9]])
def test_the_param_refuses_anything_else(value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        Params.model_validate({"semantic_cache": value})
    assert all(e["loc"][0] == "semantic_cache" for e in caught.value.errors())


def test_params_hash_ignores_the_cache_switches_but_not_what_changes_an_answer() -> None:
    base = {"style": "short", "temperature": 0.2, "variables": {"question": "Why?"}}
    same = params_hash(base)
    assert params_hash({**base, "no_cache": True, "semantic_cache": 0.8}) == same
    assert params_hash({**base, "short_input": {"link": "openai:x", "max_input_tokens": 5}}) == (
        same
    )
    assert params_hash(dict(reversed(list(base.items())))) == same
    for changed in (
        {**base, "style": "bullets"},
        {**base, "temperature": 0.9},
        {**base, "variables": {"question": "How?"}},
        {**base, "response_format": "json"},
        {**base, "max_tokens": 10},
    ):
        assert params_hash(changed) != same, changed


def test_scope_is_the_tenant_unless_global_and_unknown_scopes_fail_closed() -> None:
    tenant = uuid.uuid4()
    assert scope_of("tenant", tenant) == str(tenant)
    assert scope_of("global", tenant) == "global"
    with pytest.raises(ValueError):
        scope_of("everyone", tenant)  # type: ignore[arg-type]


def test_fake_vectors_are_unit_length_deterministic_and_close_for_the_same_words() -> None:
    a = embed("What is the capital of France?")
    assert math.isclose(math.sqrt(sum(v * v for v in a)), 1.0)
    assert len(a) == 1536 and len(embed("x y", 64)) == 64
    assert embed("What is the capital of France?") == a
    assert math.isclose(_cosine(a, embed("france: WHAT'S its capital")), 1.0)
    partly = _cosine(a, embed("What is the capital city of France?"))  # 2 of 3 words
    assert 0.7 < partly < 0.95
    assert _cosine(a, embed("What is the capital of Spain?")) < 0.7
    assert abs(_cosine(a, embed("Explain how a diesel engine works."))) < 0.2
    assert embed("the of and") == [0.0] * 1536  # no content words: no direction


def test_vector_literal_is_pgvector_text_form() -> None:
    assert vector_literal([0.0, 0.5, -0.25]) == "[0,0.5,-0.25]"


def test_config_check_names_unknown_templates_and_bad_embedding_links() -> None:
    from llmq.config_check import reference_problems
    from llmq.settings import Settings

    assert reference_problems(Settings(semantic_cache_templates={"prompt": 0.9})) == []
    (problem,) = reference_problems(Settings(semantic_cache_templates={"translate": 0.9}))
    assert problem.startswith("semantic_cache_templates['translate']: unknown template")
    (problem,) = reference_problems(Settings(semantic_cache_embedding="anthropic:embed"))
    assert problem.startswith("semantic_cache_embedding: only openai")
    (problem,) = reference_problems(Settings(semantic_cache_embedding="nope"))
    assert problem.startswith("semantic_cache_embedding: chain link 'nope'")
    with pytest.raises(ValidationError):
        Settings(semantic_cache_templates={"prompt": 1.5})
