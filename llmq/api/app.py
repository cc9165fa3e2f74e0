"""The FastAPI application factory: thin, it validates, authenticates, writes and publishes."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from llmq.admission.guard import build_selection
from llmq.admission.pipeline import AdmissionPipeline
from llmq.admission.publish import Broker
from llmq.admission.records import PostgresRecords
from llmq.config_check import check_references
from llmq.resilience.redis_clients import redis_client
from llmq.settings import Settings, get_settings
from llmq.store.engine import API_SLOTS, get_engine, set_slots
from llmq.telemetry import logs, tracing
from llmq.workers.dispatch import publish_batch_dispatch, publish_jobs

from . import errors, observability
from .audit import AuthFailureMonitor
from .auth import Authenticator
from .key_limits import KeyLimiter
from .limits import UPLOAD_ENVELOPE_BYTES, BodySizeLimit
from .routes import (
    admin,
    audit,
    batches,
    compat_anthropic,
    compat_openai,
    evals,
    events,
    health,
    jobs,
    retry,
    usage,
    webhooks,
)
from .schemas import BatchIn


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    check_references(settings)  # a template or provider the settings name must exist
    logs.configure(settings, "api")
    tracing.configure(settings.tracing, "api")
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set (use `llmq up` for the embedded default)")
    app = FastAPI(
        title="llmq",
        version="0.1.0",
        description="Queue-backed LLM job processing: submit jobs and batches, poll results.",
        # Request spans only: metrics are Prometheus', and OTel logs of validation errors
        # would carry request bodies (document text).
        telemetry={"metrics": False, "logs": False},
    )
    app.state.settings = settings
    set_slots(API_SLOTS)
    app.state.engine = get_engine(settings.database_url)
    app.state.redis = redis_client(settings)
    # Failed-auth bursts are counted on a short-timeout client: a hung Redis delays a 401 by
    # at most a second, and the burst goes unrecorded (logged), never the request failing.
    failures = AuthFailureMonitor(redis_client(settings, timeout_s=1.0), app.state.engine)
    app.state.authenticator = Authenticator(app.state.engine, on_failure=failures.failed)
    guards = build_selection(settings)  # fails the start on an unknown guardrail
    errors.install(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(batches.router)
    app.include_router(compat_openai.router)
    app.include_router(compat_anthropic.router)
    app.include_router(retry.router)
    app.include_router(events.router)
    app.include_router(webhooks.router)
    app.include_router(usage.router)
    app.include_router(evals.router)
    observability.install(app)
    _install_security(app, settings)
    app.state.admission = AdmissionPipeline(
        settings,
        guards,
        PostgresRecords(app.state.engine),
        Broker(jobs=publish_jobs, batch=publish_batch_dispatch),
        limit_items=app.state.key_limiter.check_items,
    )
    _document_models(app, BatchIn)
    return app


def _document_models(app: FastAPI, *models: type[BaseModel]) -> None:
    """Put models that routes parse themselves (so FastAPI never sees them) into the schema's
    components, where the routes' documented bodies refer to them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()  # cached by FastAPI as app.openapi_schema
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in schema.pop("$defs", {}).items():
                schemas.setdefault(name, definition)
            schemas[model.__name__] = schema
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented extension point


def _install_security(app: FastAPI, settings: Settings) -> None:
    """Key management, per-key rate limits, the body-size cap and (opt-in) CORS."""
    # Its own client with a short timeout: every request asks the limiter, a Lua call takes
    # well under a millisecond, and with Redis hung the limiter fails open after 1 s, not 5.
    app.state.key_limiter = KeyLimiter(redis_client(settings, timeout_s=1.0), settings)
    app.include_router(admin.router)
    app.include_router(audit.router)
    # The OpenAI-compatible upload has its own cap (LLMQ_COMPAT_MAX_FILE_BYTES), checked again
    # by the route on the file itself; the slack is the multipart envelope around it.
    uploads = {"/openai/v1/files": settings.compat_max_file_bytes + UPLOAD_ENVELOPE_BYTES}
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, per_path=uploads)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "X-Request-ID",
                "x-api-key",
                "anthropic-version",
                "Last-Event-ID",
            ],
            expose_headers=["X-Request-ID", "Retry-After", "Idempotent-Replayed"],
        )
