"""The fake provider's OpenAI `/v1/embeddings` (registered by llmq/testing/fake_provider.py).

Vectors are deterministic hashed bags of words, L2-normalised: each word (lower-cased, common
function words left out) adds +-1 to one of `dimensions` buckets chosen by a hash of the word.
Two texts' cosine similarity is then about the share of the words they have in common, so a
reworded question with the same words is close, an unrelated one is near 0, and tests of the
semantic cache mean something. Calls are counted in `/_fake/stats` (`by_api["embeddings"]`);
a script's `status` rules with `api: "embeddings"` fail them (the other faults are chat-only).
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DEFAULT_DIMENSIONS = 1536
_WORD = re.compile(r"[a-z0-9]+")
# Words that carry no topic: without them "what is the capital of France" and "the capital of
# France is what" are the same bag, and unrelated questions do not meet on "the".
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "me",
        "of",
        "on",
        "or",
        "please",
        "s",
        "tell",
        "that",
        "the",
        "this",
        "to",
        "was",
        "what",
        "whats",
        "which",
        "who",
        "why",
        "with",
        "you",
        "your",
    ]
)


def words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


def embed(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The hashed bag-of-words vector of `text`, unit length (all zeros for no words)."""
    vector = [0.0] * dimensions
    for word in words(text):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest[:4], "little") % dimensions
        vector[bucket] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


async def _embeddings(request: Request) -> Response:
    # The FakeProviderState (not imported: fake_provider imports this module).
    state = request.app.state.fake
    try:
        body: dict[str, Any] = await request.json()
    except ValueError:
        body = {}
    model = str(body.get("model") or "")
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not model or not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        state.record_status(400)
        message = "'model' and 'input' (a string or a list of strings) are required"
        error = {"message": message, "type": "invalid_request_error"}
        return JSONResponse({"error": error}, status_code=400)
    state.record_request("embeddings", model, body)
    rule = state.choose_rule("embeddings", model, " ".join(inputs))
    if rule is not None and rule.fault == "status":
        state.record_status(rule.status)
        error = {"message": rule.message or "scripted failure", "type": "server_error"}
        return JSONResponse({"error": error}, status_code=rule.status)
    dimensions = int(body.get("dimensions") or DEFAULT_DIMENSIONS)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(inputs):
        vector = embed(text, dimensions)
        value: Any = (
            base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            if as_base64
            else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": value})
    tokens = sum(_tokens(t) for t in inputs)
    state.record_status(200)
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def routes() -> list[Route]:
    return [
        Route("/v1/embeddings", _embeddings, methods=["POST"]),
        Route("/embeddings", _embeddings, methods=["POST"]),
    ]
