"""The offline last link: an extractive summarizer, labelled as such, that costs nothing.

It picks sentences from the document; it does not pretend to be an LLM, and it only handles the
summarization templates (any other prompt fails over with `unsupported`).
"""

from __future__ import annotations

from llmq.cost.tokens import estimate_tokens
from llmq.longdocs.summarizer import summarize_extractive

from .base import Completion, CompletionRequest, ProviderError, Usage

STYLE_WORDS = {"short": 50, "paragraph": 120, "bullets": 120, "executive": 160, "json": 120}


class LocalProvider:
    name = "local"

    def is_configured(self) -> bool:
        return True

    def complete(self, request: CompletionRequest) -> Completion:
        if request.model != "extractive":
            raise ProviderError(
                "not_found", f"local provider has no model {request.model!r}", retryable=False
            )
        if request.document is None:
            raise ProviderError(
                "unsupported",
                "the local extractive summarizer only serves summarization templates",
                retryable=False,
            )
        style = request.style or "paragraph"
        max_words = min(STYLE_WORDS.get(style, 120), max(10, request.max_tokens * 3 // 4))
        summary = summarize_extractive(request.document, max_words=max_words)
        if style == "bullets":
            from llmq.longdocs.summarizer import split_sentences

            summary = "\n".join(f"- {sentence}" for sentence in split_sentences(summary))
        elif style == "json":  # the summarize_json template's shape
            import json

            from llmq.longdocs.summarizer import split_sentences

            summary = json.dumps({"summary": summary, "key_points": split_sentences(summary)})
        return Completion(
            text=summary,
            usage=Usage(
                input_tokens=estimate_tokens(request.document),
                output_tokens=estimate_tokens(summary),
            ),
            finish_reason="stop",
            http_status=None,  # no HTTP involved
        )
