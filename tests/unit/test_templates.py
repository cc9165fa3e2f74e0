"""Templates: versions, declared variables, and the A/B assignment's stability and share."""

from __future__ import annotations

import json
import uuid

import pytest

from llmq.providers.base import CompletionRequest
from llmq.providers.local import LocalProvider
from llmq.templates import (
    FAMILIES,
    Experiment,
    Template,
    TemplateError,
    ab_bucket,
    candidate_versions,
    choose_version,
    get_family,
    get_template,
)


def test_summarize_has_the_four_styles_and_a_json_variant() -> None:
    assert set(get_template("summarize").styles) >= {"short", "bullets", "executive", "paragraph"}
    assert get_template("summarize_json").output == "json"


def test_version_one_renders_the_original_prompt() -> None:
    rendered = get_template("summarize", 1).render("DOC", {"style": "short"})
    assert rendered.user == "Summarize the following document.\n\n<document>\nDOC\n</document>"
    assert rendered.system is not None and rendered.system.endswith("at most two sentences.")
    assert rendered.document == "DOC" and rendered.style == "short"


def test_defaults_fill_optional_variables_and_given_values_replace_them() -> None:
    v2 = get_template("summarize", 2)
    assert "Write for a busy reader" in (v2.render("x", {}).system or "")
    given = v2.render("x", {"variables": {"audience": "the finance team"}})
    assert "Write for the finance team" in (given.system or "")


def test_an_undeclared_variable_is_refused_with_the_declared_ones_named() -> None:
    with pytest.raises(TemplateError, match=r"no variable 'tone' \(declared: audience, focus\)"):
        get_template("summarize", 2).render("x", {"variables": {"tone": "dry"}})
    with pytest.raises(TemplateError, match=r"declared: none"):
        get_template("summarize", 1).render("x", {"variables": {"audience": "me"}})


def test_a_missing_required_variable_is_refused() -> None:
    with pytest.raises(TemplateError, match="needs variable 'question'"):
        get_template("summarize_for_question").render("x", {})
    ok = get_template("summarize_for_question").render("x", {"variables": {"question": "Why?"}})
    assert ok.user.startswith("Question: Why?")


def test_braces_in_documents_and_values_are_data_not_placeholders() -> None:
    rendered = get_template("summarize_for_question").render(
        "a {b} c {{d}}", {"variables": {"question": "what is {x}?"}}
    )
    assert "a {b} c {{d}}" in rendered.user and "what is {x}?" in rendered.user


def test_unknown_names_versions_and_styles_are_template_errors() -> None:
    with pytest.raises(TemplateError, match="unknown template 'nope'"):
        get_template("nope")
    with pytest.raises(TemplateError, match="has no version 9; available: 1, 2"):
        get_template("summarize", 9)
    with pytest.raises(TemplateError, match="unknown style 'haiku'"):
        get_template("summarize").render("x", {"style": "haiku"})
    with pytest.raises(TemplateError, match="unknown template 'summarize_section'"):
        get_family("summarize_section", public=True)  # internal: map-reduce only


def test_a_template_must_declare_exactly_the_variables_it_uses() -> None:
    with pytest.raises(ValueError, match="not declared"):
        Template(name="t", version=1, system=None, user="{input} {who}")
    with pytest.raises(ValueError, match="not used"):
        Template(name="t", version=1, system=None, user="{input}", variables={"who": None})
    for family in FAMILIES.values():  # the shipped ones were checked when they were built
        for version, template in family.versions.items():
            assert template.version == version and template.name == family.name


def test_the_local_provider_answers_the_json_variant_with_json() -> None:
    rendered = get_template("summarize_json").render(
        "The plant costs 14 million dollars. It opens in March. Rates rise 2 percent.", {}
    )
    completion = LocalProvider().complete(
        CompletionRequest(
            model="extractive", user=rendered.user, document=rendered.document, style="json"
        )
    )
    body = json.loads(completion.text)
    assert body["summary"] and isinstance(body["key_points"], list)


# -- A/B -------------------------------------------------------------------------------------


def test_the_same_item_always_gets_the_same_version() -> None:
    family = get_family("summarize")
    split = Experiment(version=2, percent=30)
    first = [
        choose_version(family, pinned=None, tenant="t1", unit=f"doc-{i}", experiment=split)
        for i in range(500)
    ]
    again = [
        choose_version(family, pinned=None, tenant="t1", unit=f"doc-{i}", experiment=split)
        for i in range(500)
    ]
    assert first == again
    assert set(first) == {1, 2}


def test_the_split_is_close_to_the_configured_share() -> None:
    family = get_family("summarize")
    for percent in (5, 30, 50):
        split = Experiment(version=2, percent=percent)
        chosen = [
            choose_version(family, pinned=None, tenant=str(t), unit=f"item-{i}", experiment=split)
            for t in range(4)
            for i in range(5000)
        ]
        share = chosen.count(2) / len(chosen) * 100
        assert abs(share - percent) < 1.5, (percent, share)


def test_tenants_are_split_independently() -> None:
    a = [ab_bucket("summarize", "tenant-a", f"x{i}") < 50 for i in range(4000)]
    b = [ab_bucket("summarize", "tenant-b", f"x{i}") < 50 for i in range(4000)]
    agreement = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    assert 0.45 < agreement < 0.55  # unrelated coins agree about half the time


def test_a_pinned_version_wins_and_is_the_only_candidate() -> None:
    family = get_family("summarize")
    split = Experiment(version=2, percent=100)
    unit = uuid.uuid4().hex
    assert choose_version(family, pinned=1, tenant="t", unit=unit, experiment=split) == 1
    assert choose_version(family, pinned=None, tenant="t", unit=unit, experiment=split) == 2
    assert candidate_versions(family, 1, split) == [1]
    assert candidate_versions(family, None, split) == [1, 2]
    assert candidate_versions(family, None, None) == [1]
