"""One error shape for every 4xx/5xx: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmq.admission.errors import AdmissionError
from llmq.store.crypto import DecryptionError

from .schemas import JSON_TOO_DEEP

log = logging.getLogger(__name__)
BODY_PARSE_ERROR = "There was an error parsing the body"  # FastAPI's 400 for undecodable bodies


class ApiError(AdmissionError):
    """A refusal by the HTTP layer itself (authentication, parsing, a missing resource, a rate
    limit): an admission refusal's shape, plus response headers. One handler answers both."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, code, message, details=details)
        self.headers = headers


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def json_message(err: Mapping[str, Any]) -> str:
    """Pydantic's message for one error, with its JSON parser's "recursion limit exceeded"
    said as what it is: the document is nested too deep (and the limit)."""
    message: str = err.get("msg", "invalid")
    if err.get("type") == "json_invalid" and "recursion limit exceeded" in message:
        return JSON_TOO_DEEP
    return message


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors():
        details.append(
            {
                "loc": ".".join(str(p) for p in err.get("loc", ())),
                "message": json_message(err),
                "type": err.get("type", "value_error"),
            }
        )
    return details


def body_parse_error(exc: StarletteHTTPException) -> str:
    """Why FastAPI could not parse a body (its 400 names no reason): the stdlib parser ran
    out of stack on deep nesting, or the bytes are not UTF-8 JSON."""
    if isinstance(exc.__cause__, RecursionError):
        return f"body: {JSON_TOO_DEEP}"
    return "body: not valid UTF-8 JSON"


HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def allowed_methods(request: Request) -> str:
    """The `Allow` of a 405: the methods the API documents at this path. (Starlette names only
    the first matching route's, and GET and POST of one path are separate routes here.)"""
    methods: set[str] = set()
    for pattern, verbs in _documented_paths(request.app):
        if pattern.fullmatch(request.url.path):
            methods |= verbs
    return ", ".join(sorted(methods))


def _documented_paths(app: FastAPI) -> list[tuple[re.Pattern[str], set[str]]]:
    paths: list[tuple[re.Pattern[str], set[str]]] | None = getattr(
        app.state, "documented_paths", None
    )
    if paths is None:
        paths = [
            (
                re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path))),
                {method.upper() for method in item if method in HTTP_METHODS},
            )
            for path, item in app.openapi()["paths"].items()
        ]
        app.state.documented_paths = paths
    return paths


def install(app: FastAPI) -> None:
    @app.exception_handler(AdmissionError)  # and ApiError, its subclass
    async def _refused(_: Request, exc: AdmissionError) -> JSONResponse:
        headers = exc.headers if isinstance(exc, ApiError) else None
        return error_response(exc.status, exc.code, exc.message, exc.details, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        first = details[0] if details else {"loc": "body", "message": "invalid request"}
        return error_response(
            422, "invalid_request", f"{first['loc']}: {first['message']}", details
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == BODY_PARSE_ERROR:
            # Undecodable bytes (not UTF-8) get the same 422 as malformed JSON.
            return error_response(422, "invalid_request", body_parse_error(exc))
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            exc.status_code, "http_error"
        )
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

    @app.exception_handler(DecryptionError)
    async def _undecryptable(_: Request, exc: DecryptionError) -> JSONResponse:
        # The operator's keys, not the request: say so to both, never serve ciphertext.
        log.error("stored data cannot be decrypted: %s; check LLMQ_ENCRYPTION_KEYS", exc)
        return error_response(
            503,
            "decryption_failed",
            f"{exc}: the operator must configure the key it was written with",
        )

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", type(exc.orig).__name__)
        return error_response(
            503,
            "database_unavailable",
            "the database is unavailable; retry shortly",
            headers={"Retry-After": "5"},
        )
