"""What the OpenAI- and Anthropic-compatible routers share: their error shapes, request ids,
authentication by `Authorization: Bearer` or `x-api-key`, and the services they use."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmq.admission.errors import AdmissionError
from llmq.compat.common import ModelResolver
from llmq.cost.pricing import load_price_table
from llmq.errors import LlmqError
from llmq.settings import Settings
from llmq.store import Principal

from ..errors import BODY_PARSE_ERROR, allowed_methods, body_parse_error, json_message

log = logging.getLogger(__name__)


class CompatError(LlmqError):
    """An error answered in the compatible API's own shape. `kind` is the error type (OpenAI's
    `type`, Anthropic's `error.type`); None picks the usual one for the status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code
        self.param = param
        self.headers = headers


ErrorRenderer = Callable[[CompatError, str], dict[str, Any]]


def _as_compat(exc: Exception) -> CompatError:
    if isinstance(exc, CompatError):
        return exc
    if isinstance(exc, AdmissionError):  # ApiError included
        return CompatError(exc.status, exc.message, code=exc.code)
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        message = f"{param}: {json_message(first)}" if param else "invalid request body"
        return CompatError(400, message, code="invalid_request", param=param)
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 400 and exc.detail == BODY_PARSE_ERROR:
            return CompatError(400, body_parse_error(exc), code="invalid_request")
        return CompatError(exc.status_code, str(exc.detail))
    log.warning("database unavailable: %s", type(exc).__name__)
    return CompatError(503, "the database is unavailable; retry shortly")


def route_class(render: ErrorRenderer, request_id_headers: tuple[str, ...]) -> type[APIRoute]:
    """An APIRoute whose errors (auth, validation, ours) come out in the API's own shape and
    whose every response carries a request id."""

    class CompatRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                request_id = f"req_{uuid.uuid4().hex}"
                try:
                    response = await handler(request)
                except (
                    CompatError, AdmissionError, RequestValidationError, StarletteHTTPException,
                    OperationalError,
                ) as exc:  # fmt: skip
                    error = _as_compat(exc)
                    headers = dict(error.headers or {})
                    if error.status == 503:
                        headers["Retry-After"] = "5"
                    if error.status == 409:
                        headers["x-should-retry"] = "false"  # the SDKs retry 409 otherwise
                    response = JSONResponse(
                        render(error, request_id), status_code=error.status, headers=headers
                    )
                for header in request_id_headers:
                    response.headers[header] = request_id
                return response

            return handle

    return CompatRoute


# Every method, so any request under a compat prefix is answered in that API's own shape.
CATCH_ALL_METHODS = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]


def unknown_route(request: Request, shown_path: str) -> CompatError:
    """A 405 naming the methods when the path exists under another method, else a 404."""
    allowed = allowed_methods(request)
    if allowed:
        return CompatError(405, f"Method Not Allowed ({request.method} {shown_path})",
                           headers={"Allow": allowed})  # fmt: skip
    return CompatError(404, f"Invalid URL ({shown_path})")


def principal(request: Request) -> Principal:
    """The caller, from `x-api-key` (Anthropic clients) or `Authorization: Bearer` (OpenAI)."""
    key = request.headers.get("x-api-key", "").strip()
    if not key:
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        key = bearer.strip() if scheme.lower() == "bearer" else ""
    if not key:
        request.app.state.authenticator.failed(request, "missing")
        raise CompatError(401, "missing API key: send 'x-api-key' or 'Authorization: Bearer'")
    found = request.app.state.authenticator.principal_for_key(key)
    if found is None:
        request.app.state.authenticator.failed(request, "invalid")
        raise CompatError(401, "invalid or revoked API key", code="invalid_api_key")
    return found


def resolver(request: Request) -> ModelResolver:
    settings: Settings = request.app.state.settings
    prices = load_price_table(settings.pricing_file)
    return ModelResolver([*settings.default_chain, *prices.models])


CompatPrincipal = Annotated[Principal, Depends(principal)]
ResolverDep = Annotated[ModelResolver, Depends(resolver)]


def page_limit(limit: int | None, default: int, maximum: int) -> int:
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise CompatError(400, f"limit must be between 1 and {maximum}", param="limit")
    return limit
