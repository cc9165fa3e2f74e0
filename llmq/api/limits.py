"""Request-size cap enforced at the ASGI edge, before the body is parsed.

A declared Content-Length over the cap is refused at once; a chunked body is counted as it
streams in and refused as soon as it passes the cap, so an oversized upload never sits in
memory whole. The body read so far is replayed to the app unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Room for a multipart upload's boundaries, part headers and other form fields.
UPLOAD_ENVELOPE_BYTES = 64 * 1024


class BodySizeLimit:
    """`max_bytes` for every request, except the paths in `per_path` (exact match), which have
    their own cap (a file upload's is larger than a JSON request's)."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, per_path: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.default_max_bytes = max_bytes
        self.per_path = per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        max_bytes = self.per_path.get(scope.get("path", ""), self.default_max_bytes)
        if scope["type"] != "http" or max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > max_bytes:
            await self._refuse(send, max_bytes)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # client went away: let the app see the disconnect
            size += len(message.get("body", b""))
            if size > max_bytes:
                await self._refuse(send, max_bytes)
                return
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replayed() -> Message:
            # After the buffered body, hand through (e.g. http.disconnect for streaming replies).
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, send: Send, max_bytes: int) -> None:
        body: dict[str, Any] = {
            "error": {
                "code": "payload_too_large",
                "message": f"request body is larger than {max_bytes} bytes",
            }
        }
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
