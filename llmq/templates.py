"""Prompt templates: versioned, with declared variables, rendered before the provider call."""

from __future__ import annotations

from dataclasses import dataclass, field

SUMMARY_STYLES = {
    "paragraph": "Write one concise paragraph (at most about 120 words).",
    "short": "Write at most two sentences.",
    "bullets": "Write 3 to 6 bullet points, one line each, starting with '- '.",
    "executive": (
        "Write an executive summary: one line with the bottom line, then the key facts, "
        "numbers and decisions, then risks or open questions."
    ),
}


class TemplateError(ValueError):
    """An unknown template, style or missing variable (a 422 at submission)."""


@dataclass(frozen=True)
class Rendered:
    system: str | None
    user: str
    document: str | None  # the raw text, for providers (local) that work on the document
    style: str | None
    messages: list[dict[str, str]] | None = None  # a chat's turns, sent as they are


@dataclass(frozen=True)
class Template:
    name: str
    version: int
    system: str | None
    user: str
    styles: dict[str, str] = field(default_factory=dict)
    summarizes: bool = False
    chat: bool = False  # the input is a stored conversation (llmq/chat.py), not a document
    # Guardrail chains by name (llmq.guardrails); None means the settings' chains.
    input_guardrails: tuple[str, ...] | None = None
    output_guardrails: tuple[str, ...] | None = None
    # Token budget of one input. Plain prompts over it are refused at submission (422);
    # documents (summarizes=True) are never refused for size: long ones take the long path.
    max_input_tokens: int | None = None

    def render(self, text: str, params: dict[str, object]) -> Rendered:
        if self.chat:
            return _render_chat(text)
        style = str(params.get("style", "paragraph")) if self.styles else None
        if self.styles and style not in self.styles:
            raise TemplateError(
                f"unknown style {style!r} for template {self.name!r}; "
                f"choose one of: {', '.join(self.styles)}"
            )
        instructions = self.styles.get(style, "") if style else ""
        return Rendered(
            system=self.system.format(instructions=instructions) if self.system else None,
            user=self.user.format(input=text),
            document=text if self.summarizes else None,
            style=style,
        )


TEMPLATES: dict[str, Template] = {
    "summarize": Template(
        name="summarize",
        version=1,
        system=(
            "You summarize documents faithfully. Use only facts stated in the document; keep key "
            "names, numbers and decisions; never add information. {instructions}"
        ),
        user="Summarize the following document.\n\n<document>\n{input}\n</document>",
        styles=SUMMARY_STYLES,
        summarizes=True,
    ),
    "prompt": Template(
        name="prompt", version=1, system=None, user="{input}", max_input_tokens=32_000
    ),
    # The budget applies to each stored text (system prompt, each message), as for `prompt`.
    "chat": Template(
        name="chat", version=1, system=None, user="{input}", chat=True, max_input_tokens=32_000
    ),
}


def _render_chat(text: str) -> Rendered:
    from llmq.chat import ChatFormatError, decode

    try:
        conversation = decode(text)
    except ChatFormatError as exc:
        raise TemplateError(str(exc)) from exc
    return Rendered(
        system=conversation.system,
        user="\n\n".join(m["content"] for m in conversation.messages),  # for token estimates
        document=None,
        style=None,
        messages=conversation.messages,
    )


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise TemplateError(
            f"unknown template {name!r}; available: {', '.join(sorted(TEMPLATES))}"
        ) from None
