"""The FastAPI application factory: thin, it validates, authenticates, writes and publishes."""

from __future__ import annotations

from fastapi import FastAPI

from llmq.db.engine import get_engine
from llmq.settings import Settings, get_settings
from workers.runtime import redis_client

from . import errors
from .auth import Authenticator
from .routes import batches, health, jobs, usage


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set (use `llmq up` for the embedded default)")
    app = FastAPI(
        title="llmq",
        version="0.1.0",
        description="Queue-backed LLM job processing: submit jobs and batches, poll results.",
    )
    app.state.settings = settings
    app.state.engine = get_engine(settings.database_url)
    app.state.redis = redis_client(settings)
    app.state.authenticator = Authenticator(app.state.engine)
    errors.install(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(batches.router)
    app.include_router(usage.router)
    return app
