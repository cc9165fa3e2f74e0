"""The body-size cap as an ASGI middleware: it stops reading a streamed body as soon as it
passes the cap, and hands an acceptable body to the app byte for byte."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from llmq.api.limits import BodySizeLimit


class Upload:
    """A client sending `chunks` pieces of `size` bytes, recording how many the server pulled."""

    def __init__(
        self, chunks: int, size: int, declared: int | None = None, path: str = "/v1/jobs"
    ) -> None:
        self.chunks, self.size, self.pulled = chunks, size, 0
        headers = [] if declared is None else [(b"content-length", str(declared).encode())]
        self.scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self.pulled >= self.chunks:
            return {"type": "http.disconnect"}
        self.pulled += 1
        more = self.pulled < self.chunks
        return {"type": "http.request", "body": b"x" * self.size, "more_body": more}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


class EchoLength:
    """The app behind the middleware: reads the whole body and answers with its length."""

    def __init__(self) -> None:
        self.called = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called = True
        total = 0
        while True:
            message = await receive()
            total += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(total).encode()})


def run(upload: Upload, max_bytes: int, per_path: dict[str, int] | None = None) -> EchoLength:
    app = EchoLength()
    limit = BodySizeLimit(app, max_bytes, per_path)
    asyncio.run(limit(upload.scope, upload.receive, upload.send))
    return app


def test_streamed_body_is_refused_as_soon_as_it_passes_the_cap() -> None:
    upload = Upload(chunks=1_000, size=100)  # 100 kB, chunked (no Content-Length)
    app = run(upload, max_bytes=2_000)
    assert upload.status == 413
    assert upload.body["error"]["code"] == "payload_too_large"
    assert upload.pulled == 21  # the chunk that crossed 2,000 bytes, and not one more
    assert not app.called


def test_declared_length_over_the_cap_is_refused_before_reading() -> None:
    upload = Upload(chunks=10, size=1_000, declared=10_000)
    app = run(upload, max_bytes=2_000)
    assert upload.status == 413 and upload.pulled == 0 and not app.called


def test_body_within_the_cap_reaches_the_app_whole() -> None:
    upload = Upload(chunks=20, size=100)
    app = run(upload, max_bytes=2_000)
    assert app.called and upload.status == 200
    assert upload.sent[1]["body"] == b"2000"


def test_a_path_with_its_own_cap_uses_it_and_only_that_path() -> None:
    # The file upload's cap (LLMQ_COMPAT_MAX_FILE_BYTES) is larger than the JSON requests' one.
    files = {"/openai/v1/files": 5_000}
    upload = Upload(chunks=40, size=100, path="/openai/v1/files")  # 4,000 bytes
    app = run(upload, max_bytes=2_000, per_path=files)
    assert app.called and upload.sent[1]["body"] == b"4000"
    too_big = Upload(chunks=60, size=100, path="/openai/v1/files")
    app = run(too_big, max_bytes=2_000, per_path=files)
    assert too_big.status == 413 and not app.called
    assert "larger than 5000 bytes" in too_big.body["error"]["message"]
    elsewhere = Upload(chunks=40, size=100, path="/v1/jobs")
    app = run(elsewhere, max_bytes=2_000, per_path=files)
    assert elsewhere.status == 413 and not app.called
