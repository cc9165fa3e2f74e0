"""A small HTTP client for the llmq API (used by the CLI and the demo; handy in scripts)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from llmq.events import ServerEvent, parse_sse


class ApiError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


class Client:
    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> Any:
        body = response.json() if response.content else None
        if response.status_code >= 400:
            raise ApiError(response.status_code, body)
        return body

    def submit_job(self, input: str, **fields: Any) -> dict[str, Any]:
        return self._json(self._http.post("/v1/jobs", json={"input": input, **fields}))

    def submit_batch(self, items: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        return self._json(self._http.post("/v1/batches", json={"items": items, **fields}))

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/jobs/{job_id}"))

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/batches/{batch_id}"))

    def usage(self, **params: str) -> dict[str, Any]:
        """GET /v1/usage with from/to/group_by."""
        return self._json(self._http.get("/v1/usage", params=params))

    def results(self, batch_id: str, status: str | None = None) -> Iterator[dict[str, Any]]:
        params = {"status": status} if status else None
        with self._http.stream("GET", f"/v1/batches/{batch_id}/results", params=params) as response:
            if response.status_code >= 400:
                response.read()
                self._json(response)
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)

    # Batch API (issue 5)

    def retry(self, batch_id: str) -> dict[str, Any]:
        return self._json(self._http.post(f"/v1/batches/{batch_id}/retry"))

    def events(self, path: str, last_event_id: str | None = None) -> Iterator[ServerEvent]:
        """Server-Sent Events of `/v1/batches/{id}/events` or `/v1/jobs/{id}/events`; the
        read timeout only has to outlast the server's keep-alive comments."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        with self._http.stream("GET", path, headers=headers) as response:
            if response.status_code >= 400:
                response.read()
                self._json(response)
            yield from parse_sse(response.iter_lines())

    def usage_by_template(self, since: str | None = None) -> list[dict[str, Any]]:
        params = {"since": since} if since else {}
        rows: list[dict[str, Any]] = self._json(
            self._http.get("/v1/usage/templates", params=params)
        )["data"]
        return rows
