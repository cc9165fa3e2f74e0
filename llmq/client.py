"""A small HTTP client for the llmq API (used by the CLI and the demo; handy in scripts)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx

from llmq.errors import UserError
from llmq.telemetry.events import ServerEvent, parse_sse


class ClientError(UserError):
    """Every failure of a Client call: the API refused the request, or it cannot be reached."""


class ApiRequestError(ClientError):
    """The API answered with a non-2xx status: `status` and the decoded `body` say why."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else body
        hint = " (set LLMQ_API_KEY to a key from `llmq keys create`)" if status == 401 else ""
        super().__init__(f"HTTP {status}: {message}{hint}")
        self.status = status
        self.body = body


class ApiUnreachable(ClientError):
    """No HTTP answer at all (refused, timed out, cut off): says which URL was tried."""

    def __init__(self, base_url: str, cause: httpx.TransportError) -> None:
        reason = str(cause) or type(cause).__name__
        super().__init__(
            f"cannot reach the llmq API at {base_url} ({reason}): start it (`llmq up`) or "
            "set LLMQ_API_URL / --api-url"
        )


class Client:
    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        """The one place transport failures become ApiUnreachable, for calls and streams."""
        try:
            yield
        except httpx.TransportError as exc:
            raise ApiUnreachable(self.base_url, exc) from exc

    def _json(self, response: httpx.Response) -> Any:
        body = response.json() if response.content else None
        if response.status_code >= 400:
            raise ApiRequestError(response.status_code, body)
        return body

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._reaching():
            return self._json(self._http.request(method, path, **kwargs))

    def _stream_lines(self, path: str, **kwargs: Any) -> Iterator[str]:
        with self._reaching(), self._http.stream("GET", path, **kwargs) as response:
            if response.status_code >= 400:
                response.read()
                self._json(response)
            yield from response.iter_lines()

    def submit_job(self, input: str, **fields: Any) -> dict[str, Any]:
        return self._call("POST", "/v1/jobs", json={"input": input, **fields})

    def submit_batch(self, items: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        return self._call("POST", "/v1/batches", json={"items": items, **fields})

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/batches/{batch_id}")

    def usage(self, **params: str) -> dict[str, Any]:
        """GET /v1/usage with from/to/group_by."""
        return self._call("GET", "/v1/usage", params=params)

    def evals(self, **params: str) -> dict[str, Any]:
        """GET /v1/evals with template (and since): the shadow runs' report per variant."""
        return self._call("GET", "/v1/evals", params=params)

    def results(self, batch_id: str, status: str | None = None) -> Iterator[dict[str, Any]]:
        params = {"status": status} if status else None
        for line in self._stream_lines(f"/v1/batches/{batch_id}/results", params=params):
            if line.strip():
                yield json.loads(line)

    # Batch API (issue 5)

    def retry(self, batch_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/batches/{batch_id}/retry")

    def events(self, path: str, last_event_id: str | None = None) -> Iterator[ServerEvent]:
        """Server-Sent Events of `/v1/batches/{id}/events` or `/v1/jobs/{id}/events`; the
        read timeout only has to outlast the server's keep-alive comments."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        yield from parse_sse(self._stream_lines(path, headers=headers))

    def usage_by_template(self, since: str | None = None) -> list[dict[str, Any]]:
        params = {"since": since} if since else {}
        rows: list[dict[str, Any]] = self._call("GET", "/v1/usage/templates", params=params)["data"]
        return rows
