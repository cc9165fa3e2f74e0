"""Guardrails by name: the registry a third party plugs into, per-template chains, and the
redaction that runs at ingest."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmq.admission.errors import AdmissionError
from llmq.admission.guard import check_prompt_size
from llmq.cost.tokens import estimate_tokens
from llmq.guardrails import (
    INPUT_GUARDRAILS,
    OUTPUT_GUARDRAILS,
    ChainOptions,
    Finding,
    PIIRedactor,
    UnsafeOutputGuard,
    Verdict,
    build_chain,
    load_plugins,
    register_guardrail,
    run_chain,
    unregister_guardrail,
)
from llmq.guardrails.selection import GuardrailSelection, redact
from llmq.templates import TEMPLATES, Template


class NoTicketsGuard:
    """A third-party guardrail: blocks internal ticket references."""

    name = "no_tickets"

    def check(self, text: str) -> Verdict:
        if "TICKET-" in text:
            return Verdict(text, (Finding("no_tickets", "block"),), blocked_by="no_tickets")
        return Verdict(text)


@pytest.fixture()
def plugin() -> Iterator[NoTicketsGuard]:
    guard = NoTicketsGuard()
    register_guardrail("no_tickets", guard)
    yield guard
    unregister_guardrail("no_tickets")


def test_a_registered_object_is_usable_by_name_in_a_chain(plugin: NoTicketsGuard) -> None:
    chain = build_chain(["pii", "no_tickets"])
    assert chain[1] is plugin
    result = run_chain(chain, "mail a@example.com about TICKET-12")
    assert result.blocked_by == "no_tickets"
    assert [f.rule for f in result.findings] == ["pii.email", "no_tickets"]
    assert "a@example.com" not in result.text


def test_a_factory_receives_the_chain_options() -> None:
    seen: list[ChainOptions] = []

    def factory(options: ChainOptions) -> NoTicketsGuard:
        seen.append(options)
        return NoTicketsGuard()

    register_guardrail("tickets_factory", factory, stage="output")
    try:
        assert "tickets_factory" in OUTPUT_GUARDRAILS
        build_chain(["tickets_factory"], max_input_tokens=7, banned_terms=["x"])
        assert seen == [ChainOptions(7, ("x",))]
    finally:
        unregister_guardrail("tickets_factory")
    assert "tickets_factory" not in OUTPUT_GUARDRAILS


@pytest.mark.parametrize("name", ["pii", "unsafe_output", "token_limit"])
def test_built_in_guardrails_cannot_be_replaced_or_removed(name: str) -> None:
    with pytest.raises(ValueError, match="built in"):
        register_guardrail(name, NoTicketsGuard())
    with pytest.raises(ValueError, match="built in"):
        unregister_guardrail(name)


@pytest.mark.parametrize("name", ["", "Has-Caps", "1starts_with_digit", "spa ce", "x" * 65])
def test_registry_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="lower_snake_case"):
        register_guardrail(name, NoTicketsGuard())


def test_registry_rejects_objects_without_a_check() -> None:
    with pytest.raises(TypeError, match="check"):
        register_guardrail("not_a_guard", object())  # type: ignore[arg-type]
    assert "not_a_guard" not in INPUT_GUARDRAILS


def test_one_name_cannot_be_both_an_input_and_an_output_guardrail(plugin: NoTicketsGuard) -> None:
    with pytest.raises(ValueError, match="other stage"):
        register_guardrail("no_tickets", NoTicketsGuard(), stage="output")


def test_load_plugins_imports_modules_and_fails_loudly_on_a_missing_one() -> None:
    load_plugins(["json"])  # any importable module
    with pytest.raises(ModuleNotFoundError):
        load_plugins(["llmq_no_such_plugin_module"])


def test_presidio_plugin_registers_only_when_installed() -> None:
    pytest.importorskip("presidio_analyzer")
    load_plugins(["llmq.guardrails.presidio"])
    chain = build_chain(["presidio_pii"])
    assert getattr(chain[0], "redacts", False)


# ----------------------------------------------------------------------------- per template

PROMPT = TEMPLATES["prompt"]
SUMMARIZE = TEMPLATES["summarize"]


def test_templates_without_their_own_chains_use_the_settings() -> None:
    selection = GuardrailSelection(["prompt_injection", "pii"], ["empty_output"])
    assert [g.name for g in selection.input_for(SUMMARIZE)] == ["prompt_injection", "pii"]
    assert [g.name for g in selection.output_for(SUMMARIZE)] == ["empty_output"]


def test_a_template_declares_its_own_chains(plugin: NoTicketsGuard) -> None:
    template = replace(
        PROMPT,
        name="tickets",
        input_guardrails=("no_tickets", "token_limit"),
        output_guardrails=("unsafe_output",),
    )
    selection = GuardrailSelection(["pii"], ["empty_output"], templates=[template])
    chain = selection.input_for(template)
    assert [g.name for g in chain] == ["no_tickets", "token_limit"]
    assert run_chain(chain, "x" * 200_000).blocked_by == "token_limit"  # the template's budget
    assert [type(g) for g in selection.output_for(template)] == [UnsafeOutputGuard]
    assert selection.input_for(template) is chain  # built once


def test_an_unknown_name_in_a_template_fails_when_the_selection_is_built() -> None:
    template = replace(PROMPT, name="typo", input_guardrails=("pi",))
    with pytest.raises(ValueError, match="unknown guardrail: pi"):
        GuardrailSelection(["pii"], [], templates=[template])


def test_settings_override_a_templates_token_budget() -> None:
    selection = GuardrailSelection([], [], max_input_tokens={"prompt": 10})
    assert selection.token_limit(PROMPT) == 10
    assert selection.token_limit(SUMMARIZE) is None
    assert GuardrailSelection([], []).token_limit(PROMPT) == PROMPT.max_input_tokens


def test_ingest_runs_only_the_redactors_of_the_templates_chain() -> None:
    selection = GuardrailSelection(["prompt_injection", "pii", "banned_terms"], [])
    redactors = selection.redactors_for(SUMMARIZE)
    assert [type(g) for g in redactors] == [PIIRedactor]
    text, findings = redact(redactors, "Card 4111 1111 1111 1111, mail jo@example.org, jo@x.io")
    assert text == "Card [CARD], mail [EMAIL], [EMAIL]"
    assert findings == [
        {"rule": "pii.email", "action": "redact", "count": 2, "stage": "ingest"},
        {"rule": "pii.card", "action": "redact", "count": 1, "stage": "ingest"},
    ]
    no_pii = GuardrailSelection(["prompt_injection"], [])
    assert no_pii.redactors_for(SUMMARIZE) == []
    assert redact([], "jo@example.org") == ("jo@example.org", [])


def test_redacted_text_has_nothing_left_to_redact() -> None:
    # The worker runs the chain again on the stored text: it must not count the PII twice.
    text, _ = redact([PIIRedactor()], "Call +44 20 7946 0958 or mail a.b@c.de, SSN 123-45-6789")
    assert PIIRedactor().check(text).findings == ()


@pytest.mark.parametrize(
    "text", ["No digits or at-signs here.", "", "Plain words; colons: and (brackets)."]
)
def test_text_without_digits_or_at_signs_is_passed_through_unchanged(text: str) -> None:
    assert PIIRedactor().check(text) == Verdict(text=text)


# ----------------------------------------------------------------------------- size at submission


def test_a_prompt_over_the_budget_is_refused_with_every_offending_item_listed() -> None:
    selection = GuardrailSelection([], [], max_input_tokens={"prompt": 50})
    ok, long = "short prompt", "word " * 100
    with pytest.raises(AdmissionError) as caught:
        check_prompt_size(selection, PROMPT, [ok, long, ok, long], "body.items.{index}.input")
    error = caught.value
    assert (error.status, error.code) == (422, "input_too_long")
    assert error.details is not None
    assert [d["loc"] for d in error.details] == ["body.items.1.input", "body.items.3.input"]
    assert "2 items over the limit" in error.message
    check_prompt_size(selection, PROMPT, [ok, ok], "body.input")  # no error


def test_documents_are_never_refused_for_size() -> None:
    selection = GuardrailSelection([], [], max_input_tokens={"summarize": 5})
    check_prompt_size(selection, SUMMARIZE, ["word " * 1000], "body.input")


def test_details_of_a_huge_refused_batch_are_bounded() -> None:
    selection = GuardrailSelection([], [], max_input_tokens={"prompt": 1})
    with pytest.raises(AdmissionError) as caught:
        check_prompt_size(selection, PROMPT, ["two words"] * 1000, "body.items.{index}.input")
    assert caught.value.details is not None and len(caught.value.details) == 20
    assert "1000 items over the limit" in caught.value.message


@given(
    text=st.text(alphabet=st.sampled_from("ab \n.é"), max_size=400),
    limit=st.integers(min_value=1, max_value=300),
)
def test_the_fast_path_never_lets_an_over_budget_prompt_through(text: str, limit: int) -> None:
    template = Template(name="p", version=1, system=None, user="{input}", max_input_tokens=limit)
    selection = GuardrailSelection([], [])
    if estimate_tokens(text) > limit:
        with pytest.raises(AdmissionError):
            check_prompt_size(selection, template, [text], "body.input")
    else:
        check_prompt_size(selection, template, [text], "body.input")


def _redact_without_shortcuts(text: str) -> str:
    from llmq.guardrails.pii import DETECTORS

    for _rule, pattern, redact_one in DETECTORS:
        text = pattern.sub(lambda m, r=redact_one: r(m.group(0))[0], text)
    return text


PIECES = [
    "jo@example.org", "4111 1111 1111 1111", "4111-1111-1111-1111", "123-45-6789",
    "+44 20 7946 0958", "(212) 555-0147", "GB82 WEST 1234 5698 7654 32", "DE89370400440532013000",
    "+1 (212) 555-0147", "212.555.0147", "NO9386011117947", "4111111111111111",
    "12", "2024-05-01", "v1.2.3", "ISBN 978-0-306-40615-7", "call", "-", "@", " ", "\n", "x",
]  # fmt: skip


@given(st.lists(st.sampled_from(PIECES), max_size=12))
def test_the_redactors_shortcuts_never_change_its_result(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert PIIRedactor().check(text).text == _redact_without_shortcuts(text)


@given(st.text(alphabet="0123456789 -().+@GBNOxe.\n", max_size=80))
def test_the_shortcuts_hold_on_arbitrary_digit_soup(text: str) -> None:
    assert PIIRedactor().check(text).text == _redact_without_shortcuts(text)


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 7, 50, 999, 32_000])
def test_the_fast_path_holds_for_the_wordiest_text_of_any_length(limit: int) -> None:
    # "a a a ...": one token-estimated word per two characters, the estimator's worst case.
    template = Template(name="p", version=1, system=None, user="{input}", max_input_tokens=limit)
    selection = GuardrailSelection([], [])
    for length in range(max(0, (limit - 1) * 3 // 2 - 3), (limit - 1) * 3 // 2 + 4):
        text = ("a " * length)[:length]
        if estimate_tokens(text) > limit:
            with pytest.raises(AdmissionError):
                check_prompt_size(selection, template, [text], "body.input")
        else:
            check_prompt_size(selection, template, [text], "body.input")


def test_guardrail_settings_accept_comma_lists_and_json_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llmq.settings import Settings

    monkeypatch.setenv("LLMQ_INPUT_GUARDRAILS", "pii, banned_terms")
    monkeypatch.setenv("LLMQ_OUTPUT_GUARDRAILS", '["unsafe_output"]')
    monkeypatch.setenv("LLMQ_GUARDRAIL_PLUGINS", "acme.guards,acme.more")
    monkeypatch.setenv("LLMQ_TEMPLATE_MAX_INPUT_TOKENS", '{"prompt": 8000}')
    monkeypatch.setenv("LLMQ_REDACT_PII_AT_INGEST", "false")
    settings = Settings(database_url="postgresql://unused")
    assert settings.input_guardrails == ["pii", "banned_terms"]
    assert settings.output_guardrails == ["unsafe_output"]
    assert settings.guardrail_plugins == ["acme.guards", "acme.more"]
    assert settings.template_max_input_tokens == {"prompt": 8000}
    assert settings.redact_pii_at_ingest is False
