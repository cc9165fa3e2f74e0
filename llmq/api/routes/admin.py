"""Key management over HTTP for holders of an admin key: create (the key is shown once), list,
revoke. Admin keys act across tenants: they are the operator's, not a tenant's."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from llmq import store
from llmq.store import Principal

from ..deps import EngineDep, PrincipalDep
from ..errors import ApiError
from ..schemas import ErrorOut, KeyCreated, KeyIn, KeyList, KeyOut, error_responses
from .jobs import parse_id


def admin(who: PrincipalDep) -> Principal:
    if not who.is_admin:
        raise ApiError(403, "forbidden", "this endpoint needs an admin API key")
    return who


AdminDep = Annotated[Principal, Depends(admin)]
router = APIRouter(prefix="/v1/admin/keys", tags=["admin"])
ERRORS = error_responses(401, 403, 422, 413, 429)


def _key_out(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "id": str(row["id"]), "admin": row["is_admin"]}


@router.post("", status_code=201, response_model=KeyCreated, responses=ERRORS)
def create_key(body: KeyIn, engine: EngineDep, who: AdminDep) -> KeyCreated:
    key = store.create_api_key(
        engine,
        body.tenant,
        admin=body.admin,
        requests_per_min=body.requests_per_min,
        items_per_min=body.items_per_min,
        actor=str(who.key_id),
    )
    row = store.get_api_key_by_hash(engine, store.hash_key(key))
    assert row is not None  # just written in the same database
    return KeyCreated.model_validate({**_key_out(row), "key": key})


@router.get("", response_model=KeyList, responses=ERRORS)
def list_keys(engine: EngineDep, who: AdminDep) -> KeyList:
    store.record_event(engine, store.AuditEvent(str(who.key_id), "admin.keys_listed"))
    return KeyList(data=[KeyOut.model_validate(_key_out(r)) for r in store.list_api_keys(engine)])


@router.delete(
    "/{key_id}",
    status_code=204,
    responses={**ERRORS, 404: {"model": ErrorOut}, 409: {"model": ErrorOut}},
)
def revoke_key(key_id: str, request: Request, engine: EngineDep, who: AdminDep) -> Response:
    try:
        store.revoke_api_key(engine, str(parse_id(key_id, "key")), actor=str(who.key_id))
    except store.KeyRefError:
        raise ApiError(404, "not_found", f"key {key_id} not found or already revoked") from None
    except store.LastAdminKey as exc:
        raise ApiError(409, "last_admin_key", str(exc)) from None
    # This instance stops honouring it now; others within the auth cache's few seconds.
    request.app.state.authenticator.forget()
    return Response(status_code=204)
