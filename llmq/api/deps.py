"""What route handlers receive: the engine, settings, the authenticated caller, the admission
pipeline, and the publisher that wakes event streams."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine

from llmq.admission.pipeline import AdmissionPipeline
from llmq.settings import Settings
from llmq.store import Principal
from llmq.telemetry.events import EventPublisher


def engine(request: Request) -> Engine:
    return request.app.state.engine


def settings(request: Request) -> Settings:
    return request.app.state.settings


def principal(request: Request) -> Principal:
    who: Principal = request.app.state.authenticator(request)
    request.app.state.key_limiter.check_request(who)  # 429 past the key's requests/min
    return who


def admission(request: Request) -> AdmissionPipeline:
    return request.app.state.admission


def events(request: Request) -> EventPublisher:
    return EventPublisher(request.app.state.redis)


EngineDep = Annotated[Engine, Depends(engine)]
SettingsDep = Annotated[Settings, Depends(settings)]
PrincipalDep = Annotated[Principal, Depends(principal)]
AdmissionDep = Annotated[AdmissionPipeline, Depends(admission)]
EventsDep = Annotated[EventPublisher, Depends(events)]
