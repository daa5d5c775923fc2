"""The REST API under ``/api`` (JSON) for the web UI and scripts (SPEC E3, E4, R3).

Each route names its privilege in ``Depends(require(...))``. Protocol code only: the work is
done by the archive services (users, registry, ingest, deletion, audit, query engine).
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Iterator
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import and_, select
from starlette.concurrency import run_in_threadpool

from pacsbox.archive.audit import StoreBatch
from pacsbox.archive.deletion import NotFound
from pacsbox.archive.dicomdir import FileSetInstance, plan_file_set
from pacsbox.archive.index.writer import INSTANCE, PATIENT, SERIES, STUDY
from pacsbox.archive.ingest import IngestRefused
from pacsbox.archive.registry import AEEntry, RegistryError
from pacsbox.archive.storage import InvalidUID, check_uid, encode_file_meta
from pacsbox.archive.users import UserError
from pacsbox.web.auth import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    Principal,
    check_password_login,
    client_address,
    context,
    require,
)
from pacsbox.web.dicomweb import BOUNDARY_RE, StowParser, parse_media_type, receive_parts

router = APIRouter()

UPLOAD_SOURCE_AE = "HTTP"


def _uid(value: str, what: str = "UID") -> str:
    """A UID path parameter (PS3.5 §9.1): anything else is a 400, never a file-system path."""
    try:
        return check_uid(value, what)
    except InvalidUID as exc:
        raise HTTPException(400, str(exc)) from exc


def _bad(exc: Exception) -> HTTPException:
    return HTTPException(400, str(exc))


# == authentication ========================================================================
class LoginBody(BaseModel):
    username: str = Field(max_length=256)
    password: str = Field(max_length=1024)


@router.post("/login", tags=["auth"], summary="Log in: sets the session cookie")
async def login(request: Request) -> JSONResponse:
    """No authentication. JSON ``{"username", "password"}`` or a form. Answers the user, the
    CSRF token to send in ``X-CSRF-Token`` and sets the HttpOnly session cookie; 401 on
    wrong credentials, 429 + Retry-After while backed off."""
    ctx = context(request)
    ctype = request.headers.get("content-type", "")
    try:
        if ctype.startswith("application/json"):
            body = LoginBody.model_validate(await request.json())
        else:
            form = await request.form()
            body = LoginBody.model_validate(
                {"username": form.get("username", ""), "password": form.get("password", "")}
            )
    except Exception as exc:
        raise HTTPException(400, "send username and password (JSON or form)") from exc
    client = client_address(request)
    user = await run_in_threadpool(check_password_login, ctx, body.username, body.password, client)
    request.state.user = user.username
    max_age = ctx.settings.session_max_age
    sid, csrf = await run_in_threadpool(ctx.users.create_session, user, client, max_age)
    ctx.audit.record("login", user=user.username, client=client, detail="session")
    response = JSONResponse({"user": _user_json(user), "csrf_token": csrf})
    secure = request.url.scheme == "https"
    response.set_cookie(
        SESSION_COOKIE, sid, max_age=max_age, httponly=True, secure=secure, samesite="strict"
    )
    response.set_cookie(
        CSRF_COOKIE, csrf, max_age=max_age, httponly=False, secure=secure, samesite="strict"
    )
    return response


@router.post("/logout", tags=["auth"], summary="End the session")
def logout(
    request: Request, p: Principal = Depends(require(None, allow_password_change=True))
) -> JSONResponse:
    ctx = context(request)
    sid = request.cookies.get(SESSION_COOKIE)
    if p.method == "session" and sid:
        ctx.users.end_session(sid)
    ctx.audit.record("logout", user=p.username, client=p.client)
    response = JSONResponse({"ok": True})
    response.delete_cookie(SESSION_COOKIE)
    response.delete_cookie(CSRF_COOKIE)
    return response


def _user_json(user: Any) -> dict[str, Any]:
    out = user.as_dict()
    out.pop("id", None)
    return _jsonable(out)


@router.get("/me", tags=["auth"], summary="The calling user")
def me(p: Principal = Depends(require(None, allow_password_change=True))) -> dict[str, Any]:
    out = {"user": _user_json(p.user), "auth": p.method}
    if p.session is not None:
        out["csrf_token"] = p.session.csrf_token
        out["session_expires_at"] = p.session.expires_at
    return out


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)


@router.post("/me/password", tags=["auth"], summary="Change one's own password")
def change_password(
    body: PasswordChange,
    request: Request,
    p: Principal = Depends(require(None, allow_password_change=True)),
) -> dict[str, Any]:
    """Needs the current password. Ends the user's other sessions."""
    ctx = context(request)
    check_password_login(ctx, p.username, body.current_password, p.client)
    if body.new_password == body.current_password:
        raise HTTPException(400, "the new password must differ from the current one")
    try:
        user = ctx.users.set_password(
            p.username,
            body.new_password,
            keep_session=p.session.id_hash if p.session else None,
        )
    except UserError as exc:
        raise _bad(exc) from exc
    ctx.audit.record(
        "admin",
        user=p.username,
        client=p.client,
        object=f"user:{p.username}",
        detail="password changed",
    )
    return {"user": _user_json(user)}


# == API tokens (one's own) ================================================================
class TokenCreate(BaseModel):
    name: str = Field("", max_length=128)
    expires_days: int | None = Field(None, ge=1, le=3650)


@router.get("/tokens", tags=["tokens"], summary="My API tokens")
def list_tokens(request: Request, p: Principal = Depends(require(None))) -> list[dict[str, Any]]:
    return [t.as_dict() for t in context(request).users.tokens(p.username)]


@router.post("/tokens", tags=["tokens"], status_code=201, summary="Create an API token")
def create_token(
    body: TokenCreate, request: Request, p: Principal = Depends(require(None))
) -> dict[str, Any]:
    """The token is in the answer once; only its hash is stored."""
    ctx = context(request)
    info, secret = ctx.users.create_token(p.username, body.name, body.expires_days)
    ctx.audit.record(
        "admin",
        user=p.username,
        client=p.client,
        object=f"token:{info.id}",
        detail=f"API token created ({body.name})",
    )
    return {**_jsonable(info.as_dict()), "token": secret}


@router.delete("/tokens/{token_id}", tags=["tokens"], summary="Revoke one of my API tokens")
def revoke_token(
    token_id: int, request: Request, p: Principal = Depends(require(None))
) -> dict[str, Any]:
    ctx = context(request)
    username = None if p.user.has("admin") else p.username
    try:
        info = ctx.users.revoke_token(token_id, username)
    except UserError as exc:
        raise HTTPException(404, str(exc)) from exc
    ctx.audit.record(
        "admin",
        user=p.username,
        client=p.client,
        object=f"token:{token_id}",
        detail="API token revoked",
    )
    return info.as_dict()


# == users and roles (admin) ===============================================================
class UserCreate(BaseModel):
    username: str = Field(max_length=64)
    role: str = Field(max_length=64)
    password: str = Field(max_length=1024)
    full_name: str = Field("", max_length=128)
    must_change_password: bool = False


class UserPatch(BaseModel):
    role: str | None = Field(None, max_length=64)
    enabled: bool | None = None
    full_name: str | None = Field(None, max_length=128)
    password: str | None = Field(None, max_length=1024)
    must_change_password: bool | None = None


@router.get("/users", tags=["users"], summary="List users")
def list_users(request: Request, _p: Principal = Depends(require("admin"))) -> list[dict]:
    return [_user_json(u) for u in context(request).users.list()]


@router.post("/users", tags=["users"], status_code=201, summary="Create a user")
def create_user(
    body: UserCreate, request: Request, p: Principal = Depends(require("admin"))
) -> dict[str, Any]:
    ctx = context(request)
    try:
        user = ctx.users.add(
            body.username,
            body.role,
            body.password,
            full_name=body.full_name,
            must_change_password=body.must_change_password,
        )
    except UserError as exc:
        raise _bad(exc) from exc
    ctx.audit.record(
        "admin",
        user=p.username,
        client=p.client,
        object=f"user:{user.username}",
        detail=f"user created (role {user.role})",
    )
    return _user_json(user)


@router.get("/users/{username}", tags=["users"], summary="One user")
def get_user(
    username: str, request: Request, _p: Principal = Depends(require("admin"))
) -> dict[str, Any]:
    user = context(request).users.get(username)
    if user is None:
        raise HTTPException(404, f"no user {username!r}")
    return _user_json(user)


@router.patch("/users/{username}", tags=["users"], summary="Change a user")
def patch_user(
    username: str, body: UserPatch, request: Request, p: Principal = Depends(require("admin"))
) -> dict[str, Any]:
    ctx = context(request)
    if ctx.users.get(username) is None:
        raise HTTPException(404, f"no user {username!r}")
    if username == p.username and (body.enabled is False or (body.role and body.role != "admin")):
        raise HTTPException(400, "an administrator cannot disable or demote themselves")
    try:
        user = ctx.users.update(
            username, role=body.role, enabled=body.enabled, full_name=body.full_name
        )
        if body.password is not None:
            user = ctx.users.set_password(
                username, body.password, must_change=bool(body.must_change_password)
            )
    except UserError as exc:
        raise _bad(exc) from exc
    changed = [k for k, v in body.model_dump().items() if v is not None and k != "password"]
    if body.password is not None:
        changed.append("password")
    ctx.audit.record(
        "admin",
        user=p.username,
        client=p.client,
        object=f"user:{username}",
        detail="changed: " + ", ".join(changed),
    )
    return _user_json(user)


@router.delete("/users/{username}", tags=["users"], summary="Remove a user")
def delete_user(
    username: str, request: Request, p: Principal = Depends(require("admin"))
) -> dict[str, Any]:
    ctx = context(request)
    if username == p.username:
        raise HTTPException(400, "an administrator cannot remove themselves")
    try:
        ctx.users.remove(username)
    except UserError as exc:
        raise HTTPException(404, str(exc)) from exc
    ctx.audit.record(
        "admin", user=p.username, client=p.client, object=f"user:{username}", detail="user removed"
    )
    return {"removed": username}


class RoleCreate(BaseModel):
    name: str = Field(max_length=64)
    privileges: list[str]
    description: str = Field("", max_length=255)


@router.get("/roles", tags=["users"], summary="Roles and their privileges")
def list_roles(request: Request, _p: Principal = Depends(require("admin"))) -> list[dict]:
    return [r.as_dict() for r in context(request).users.roles()]


@router.post("/roles", tags=["users"], status_code=201, summary="Create a custom role")
def create_role(
    body: RoleCreate, request: Request, p: Principal = Depends(require("admin"))
) -> dict[str, Any]:
    ctx = context(request)
    try:
        role = ctx.users.add_role(body.name, body.privileges, body.description)
    except UserError as exc:
        raise _bad(exc) from exc
    ctx.audit.record(
        "admin",
        user=p.username,
        client=p.client,
        object=f"role:{role.name}",
        detail="role created: " + ",".join(role.privileges),
    )
    return role.as_dict()


@router.delete("/roles/{name}", tags=["users"], summary="Remove a custom role")
def delete_role(
    name: str, request: Request, p: Principal = Depends(require("admin"))
) -> dict[str, Any]:
    ctx = context(request)
    try:
        ctx.users.remove_role(name)
    except UserError as exc:
        raise _bad(exc) from exc
    ctx.audit.record(
        "admin", user=p.username, client=p.client, object=f"role:{name}", detail="role removed"
    )
    return {"removed": name}


# == AE registry ===========================================================================
class AECreate(BaseModel):
    ae_title: str = Field(max_length=16)
    host: str = Field(max_length=255)
    port: int = Field(ge=1, le=65535)
    enabled: bool = True
    description: str = Field("", max_length=255)
    allow_store: bool = True
    allow_query: bool = True
    allow_retrieve: bool = True
    is_destination: bool = True
    tls: bool = False


class AEPatch(BaseModel):
    host: str | None = Field(None, max_length=255)
    port: int | None = Field(None, ge=1, le=65535)
    enabled: bool | None = None
    description: str | None = Field(None, max_length=255)
    allow_store: bool | None = None
    allow_query: bool | None = None
    allow_retrieve: bool | None = None
    is_destination: bool | None = None
    tls: bool | None = None


@router.get("/aes", tags=["aes"], summary="Registered AEs")
def list_aes(request: Request, _p: Principal = Depends(require("view"))) -> list[dict]:
    return [_jsonable(e.as_dict()) for e in context(request).archive.registry.list()]


@router.post("/aes", tags=["aes"], status_code=201, summary="Register an AE")
def create_ae(
    body: AECreate, request: Request, p: Principal = Depends(require("admin"))
) -> dict[str, Any]:
    ctx = context(request)
    try:
        entry = ctx.archive.registry.add(AEEntry(**body.model_dump()))
    except RegistryError as exc:
        raise _bad(exc) from exc
    ctx.audit.record(
        "admin",
        user=p.username,
        client=p.client,
        object=f"ae:{entry.ae_title}",
        detail=f"AE registered {entry.host}:{entry.port}",
    )
    return entry.as_dict()


@router.get("/aes/{title}", tags=["aes"], summary="One registered AE")
def get_ae(title: str, request: Request, _p: Principal = Depends(require("view"))) -> dict:
    entry = context(request).archive.registry.get(title)
    if entry is None:
        raise HTTPException(404, f"AE title {title!r} is not registered")
    return entry.as_dict()


@router.patch("/aes/{title}", tags=["aes"], summary="Change a registered AE")
def patch_ae(
    title: str, body: AEPatch, request: Request, p: Principal = Depends(require("admin"))
) -> dict[str, Any]:
    ctx = context(request)
    if ctx.archive.registry.get(title) is None:
        raise HTTPException(404, f"AE title {title!r} is not registered")
    try:
        entry = ctx.archive.registry.edit(title, **body.model_dump())
    except RegistryError as exc:
        raise _bad(exc) from exc
    ctx.audit.record(
        "admin",
        user=p.username,
        client=p.client,
        object=f"ae:{title}",
        detail="AE changed: " + ", ".join(k for k, v in body.model_dump().items() if v is not None),
    )
    return entry.as_dict()


@router.delete("/aes/{title}", tags=["aes"], summary="Remove a registered AE")
def delete_ae(
    title: str, request: Request, p: Principal = Depends(require("admin"))
) -> dict[str, Any]:
    ctx = context(request)
    try:
        ctx.archive.registry.remove(title)
    except RegistryError as exc:
        raise HTTPException(404, str(exc)) from exc
    ctx.audit.record(
        "admin", user=p.username, client=p.client, object=f"ae:{title}", detail="AE removed"
    )
    return {"removed": title}


@router.post("/aes/{title}/echo", tags=["aes"], summary="C-ECHO a registered AE")
def echo_ae(
    title: str, request: Request, _p: Principal = Depends(require("forward"))
) -> dict[str, Any]:
    """C-ECHO (PS3.7 §9.1.5) from our AE title to the registered node."""
    from pacsbox.dicom.scu import SCUError, echo

    ctx = context(request)
    entry = ctx.archive.registry.get(title)
    if entry is None:
        raise HTTPException(404, f"AE title {title!r} is not registered")
    try:
        status = echo(entry.host, entry.port, entry.ae_title, ctx.settings.ae_title)
    except SCUError as exc:
        return {"ae_title": entry.ae_title, "ok": False, "status": None, "message": str(exc)}
    return {
        "ae_title": entry.ae_title,
        "ok": status == 0,
        "status": f"{status:04X}",
        "message": "success" if status == 0 else "failure",
    }


# == settings, audit (admin) ===============================================================
@router.get("/settings", tags=["system"], summary="Effective settings (secrets masked)")
def get_settings(request: Request, _p: Principal = Depends(require("admin"))) -> dict:
    return context(request).settings.masked()


@router.patch("/settings", tags=["system"], summary="Change settings that apply at runtime")
async def patch_settings(
    request: Request, p: Principal = Depends(require("admin"))
) -> dict[str, Any]:
    """JSON object ``{"key": value, ...}`` of settings from ``runtime_keys`` (see
    ``GET /api/settings/runtime``). The change is validated, written to the config file (kept
    line by line, replaced atomically) and applied here at once; the other worker processes
    pick it up from the file within a few seconds (pacsbox.settings_runtime). Any other key
    is a 400 "requires restart"; a key set by a ``PACSBOX_*`` environment variable is a 409.
    Audited (``admin``, object ``settings``)."""
    from pacsbox.settings_runtime import (
        RuntimeSettingsError,
        apply_changes,
        ingest_updater,
        update_config_file,
        validate_changes,
    )

    ctx = context(request)
    try:
        body = await request.json()
    except Exception as exc:
        raise HTTPException(400, "send a JSON object of settings to change") from exc
    settings = ctx.settings
    try:
        changes = validate_changes(settings, body)
    except RuntimeSettingsError as exc:
        ctx.audit.record(
            "admin",
            user=p.username,
            client=p.client,
            outcome="failure",
            object="settings",
            detail=str(exc),
        )
        raise HTTPException(exc.status, str(exc)) from exc
    path = settings._config_file
    if path is None:
        raise HTTPException(409, "these settings were not loaded from a config file")
    try:
        await run_in_threadpool(update_config_file, path, changes)
    except (OSError, ValueError) as exc:
        raise HTTPException(500, f"cannot write the config file {path}: {exc}") from exc
    apply_changes(settings, changes)
    if ctx.archive.settings is not settings:
        apply_changes(ctx.archive.settings, changes)
    ingest_updater(ctx.archive.ingest)(changes)
    shown = dict(changes)
    ctx.audit.record(
        "admin",
        user=p.username,
        client=p.client,
        object="settings",
        detail="changed: " + ", ".join(f"{k}={v!r}" for k, v in shown.items()),
    )
    return {"changed": shown, "config_file": str(path), "settings": settings.masked()}


@router.get("/settings/runtime", tags=["system"], summary="Settings changeable at runtime")
def runtime_settings(request: Request, _p: Principal = Depends(require("admin"))) -> dict:
    from pacsbox.settings_runtime import RUNTIME_KEYS

    settings = context(request).settings
    return {
        "runtime_keys": list(RUNTIME_KEYS),
        "pinned_by_environment": sorted(k for k in settings._pinned if k in RUNTIME_KEYS),
        "config_file": str(settings._config_file) if settings._config_file else None,
    }


@router.get("/audit", tags=["system"], summary="Query the audit log (newest first)")
def get_audit(
    request: Request,
    _p: Annotated[Principal, Depends(require("admin"))],
    user: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=16)] = None,
    outcome: Annotated[str | None, Query(max_length=16)] = None,
    study_uid: Annotated[str | None, Query(max_length=64)] = None,
    object: Annotated[str | None, Query(max_length=255)] = None,  # noqa: A002
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=0, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JSONResponse:
    total, rows = context(request).audit.query(
        user=user,
        action=action,
        outcome=outcome,
        study_uid=study_uid,
        object=object,
        since=_naive(since),
        until=_naive(until),
        limit=limit,
        offset=offset,
    )
    return JSONResponse(
        [_jsonable(r.as_dict()) for r in rows], headers={"X-Total-Count": str(total)}
    )


def _naive(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is None:
        return value
    from datetime import UTC

    return value.astimezone(UTC).replace(tzinfo=None)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in d.items()}


# == archive: upload =======================================================================
@router.post("/instances", tags=["archive"], summary="Upload DICOM files (multipart)")
async def upload_instances(
    request: Request, p: Principal = Depends(require("upload"))
) -> JSONResponse:
    """``multipart/form-data`` with one or more file parts (any field name; parts without a
    file name are ignored). Each part is streamed straight into ``data/tmp`` (written once,
    bounded memory; the body may not exceed ``stow_max_bytes``: 413) and goes through the
    ingest path like a C-STORE; the answer lists per file the DICOM status (PS3.4 §B.2.3),
    the outcome and the UIDs. 200 all stored, 202 some failed, 409 none stored (as STOW-RS,
    PS3.18 §10.5.3). Audited as one ``store`` event per study (archive/audit.py)."""
    ctx = context(request)
    media, params = parse_media_type(request.headers.get("content-type", ""))
    if media != "multipart/form-data":
        raise HTTPException(415, "send multipart/form-data with DICOM files")
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 200 or not BOUNDARY_RE.fullmatch(boundary):
        raise HTTPException(400, "multipart/form-data needs a valid boundary parameter")
    limit = ctx.settings.stow_max_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"the request body exceeds {limit} bytes")
    spool = Path(ctx.settings.data_dir) / "tmp"
    spool.mkdir(parents=True, exist_ok=True)
    parser = StowParser(boundary, spool, limit)
    batch = StoreBatch(ctx.archive.ingest.audit, p.username, p.client, "HTTP upload")

    def store(part: Any) -> dict[str, Any] | None:
        name = _part_filename(part.headers.get("content-disposition", ""))
        if name is None:  # a plain form field
            with contextlib.suppress(OSError):
                os.unlink(part.path)
            return None
        return _store_upload(ctx, part, name, batch)

    results = await receive_parts(request, parser, batch, store)
    if not results:
        raise HTTPException(400, "no file in the upload")
    stored = sum(r["status"] == "0000" for r in results)
    failed = len(results) - stored
    code = 200 if failed == 0 else (202 if stored else 409)
    body: dict[str, Any] = {"stored": stored, "failed": failed, "results": results}
    if code == 409:
        body["error"] = {"status": 409, "message": "no file was stored"}
    return JSONResponse(body, status_code=code)


def _part_filename(disposition: str) -> str | None:
    """The ``filename`` of a form-data part (RFC 7578 §4.2), None for a non-file field."""
    from python_multipart.multipart import parse_options_header

    kind, options = parse_options_header(disposition)
    if kind.lower() != b"form-data" or b"filename" not in options:
        return None
    return options[b"filename"].decode("utf-8", "replace")[:255]


def _store_upload(ctx: Any, part: Any, name: str, batch: StoreBatch) -> dict[str, Any]:
    tmp = part.path
    try:
        try:
            result = ctx.archive.ingest.store_file(Path(tmp), source_ae=UPLOAD_SOURCE_AE)
        except IngestRefused as exc:
            ctx.metrics.stored.labels("failed").inc()
            message = exc.message.replace(tmp, name)
            batch.failed("", f"{name}: {exc.status:04X} {message}")
            return {
                "file": name,
                "status": f"{exc.status:04X}",
                "outcome": "failed",
                "message": message,
            }
        ctx.metrics.stored.labels(result.outcome).inc()
        batch.stored(result.study_instance_uid, result.outcome, result.size)
        return {
            "file": name,
            "status": "0000",
            "outcome": result.outcome,
            "sop_class_uid": result.sop_class_uid,
            "sop_instance_uid": result.sop_instance_uid,
            "series_instance_uid": result.series_instance_uid,
            "study_instance_uid": result.study_instance_uid,
        }
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


# == archive: read =========================================================================
_STUDY_COLS = [
    STUDY.c.study_instance_uid,
    STUDY.c.study_date,
    STUDY.c.study_time,
    STUDY.c.accession_number,
    STUDY.c.study_id,
    STUDY.c.study_description,
    STUDY.c.referring_physician_name,
    STUDY.c.modalities_in_study,
    STUDY.c.institution_name,
    STUDY.c.num_series,
    STUDY.c.num_instances,
    STUDY.c.size_bytes,
    STUDY.c.source_ae,
    STUDY.c.received_at,
    PATIENT.c.patient_id,
    PATIENT.c.issuer_of_patient_id,
    PATIENT.c.patient_name,
    PATIENT.c.patient_birth_date,
    PATIENT.c.patient_sex,
]
_SERIES_COLS = [
    SERIES.c.series_instance_uid,
    SERIES.c.modality,
    SERIES.c.series_number,
    SERIES.c.series_date,
    SERIES.c.series_time,
    SERIES.c.series_description,
    SERIES.c.body_part_examined,
    SERIES.c.num_instances,
    SERIES.c.source_ae,
    SERIES.c.received_at,
    STUDY.c.study_instance_uid,
]
_INSTANCE_COLS = [
    INSTANCE.c.sop_instance_uid,
    INSTANCE.c.sop_class_uid,
    INSTANCE.c.instance_number,
    INSTANCE.c.rows,
    INSTANCE.c.columns,
    INSTANCE.c.number_of_frames,
    INSTANCE.c.photometric_interpretation,
    INSTANCE.c.transfer_syntax_uid,
    INSTANCE.c.file_size,
    INSTANCE.c.source_ae,
    INSTANCE.c.received_at,
    SERIES.c.series_instance_uid,
    STUDY.c.study_instance_uid,
]


def _rows(engine: Any, stmt: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [_jsonable(dict(r._mapping)) for r in conn.execute(stmt)]


def _audit_read(
    ctx: Any, p: Principal, what: str, study: str = "", series: str = "", sop: str = ""
) -> None:
    ctx.audit.record(
        "read",
        user=p.username,
        client=p.client,
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        detail=what,
    )


@router.get("/studies", tags=["archive"], summary="Search studies (the query engine)")
def search_studies(
    request: Request,
    _p: Annotated[Principal, Depends(require("view"))],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> JSONResponse:
    """Query keys are DICOM keywords with C-FIND matching (PS3.4 §C.2.2.2): ``PatientName=
    DOE*``, ``StudyDate=20260101-20260131``, ``ModalitiesInStudy=CT``, ``PatientID=...``,
    ``AccessionNumber=...``, ``StudyInstanceUID=...``. Unknown keys are a 400."""
    from pacsbox.archive.query import Level, Model

    rows = _search_page(
        request, Level.STUDY, Model.STUDY_ROOT, _SEARCH_KEYS, sorted(_SEARCH_KEYS), limit, offset
    )
    page = [
        {k: (v if not isinstance(v, datetime) else v.isoformat()) for k, v in row.items()}
        for row in rows
    ]
    return JSONResponse(page)


_SEARCH_KEYS = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "StudyDescription",
        "ReferringPhysicianName",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    }
)


@router.get("/studies/{study_uid}", tags=["archive"], summary="One study (with patient)")
def get_study(
    study_uid: str, request: Request, p: Principal = Depends(require("view"))
) -> dict[str, Any]:
    ctx = context(request)
    uid = _uid(study_uid, "Study Instance UID")
    rows = _rows(
        ctx.archive.engine,
        select(*_STUDY_COLS)
        .join(PATIENT, PATIENT.c.id == STUDY.c.patient_fk)
        .where(STUDY.c.study_instance_uid == uid),
    )
    if not rows:
        raise HTTPException(404, f"no study {uid}")
    _audit_read(ctx, p, "study details", study=uid)
    return rows[0]


@router.get("/studies/{study_uid}/series", tags=["archive"], summary="Series of a study")
def list_series(
    study_uid: str, request: Request, _p: Principal = Depends(require("view"))
) -> list[dict[str, Any]]:
    ctx = context(request)
    uid = _uid(study_uid, "Study Instance UID")
    rows = _rows(
        ctx.archive.engine,
        select(*_SERIES_COLS)
        .join(STUDY, STUDY.c.id == SERIES.c.study_fk)
        .where(STUDY.c.study_instance_uid == uid)
        .order_by(SERIES.c.series_number, SERIES.c.id),
    )
    if not rows:
        _exists_or_404(ctx, STUDY.c.study_instance_uid, uid, "study")
    return rows


@router.get("/series/{series_uid}", tags=["archive"], summary="One series")
def get_series(
    series_uid: str, request: Request, _p: Principal = Depends(require("view"))
) -> dict[str, Any]:
    ctx = context(request)
    uid = _uid(series_uid, "Series Instance UID")
    rows = _rows(
        ctx.archive.engine,
        select(*_SERIES_COLS)
        .join(STUDY, STUDY.c.id == SERIES.c.study_fk)
        .where(SERIES.c.series_instance_uid == uid),
    )
    if not rows:
        raise HTTPException(404, f"no series {uid}")
    return rows[0]


@router.get("/series/{series_uid}/instances", tags=["archive"], summary="Instances of a series")
def list_instances(
    series_uid: str, request: Request, _p: Principal = Depends(require("view"))
) -> list[dict[str, Any]]:
    ctx = context(request)
    uid = _uid(series_uid, "Series Instance UID")
    rows = _rows(
        ctx.archive.engine,
        select(*_INSTANCE_COLS)
        .join(SERIES, SERIES.c.id == INSTANCE.c.series_fk)
        .join(STUDY, STUDY.c.id == SERIES.c.study_fk)
        .where(SERIES.c.series_instance_uid == uid)
        .order_by(INSTANCE.c.instance_number, INSTANCE.c.id),
    )
    if not rows:
        _exists_or_404(ctx, SERIES.c.series_instance_uid, uid, "series")
    return rows


@router.get("/instances/{sop_uid}", tags=["archive"], summary="One instance")
def get_instance(
    sop_uid: str, request: Request, _p: Principal = Depends(require("view"))
) -> dict[str, Any]:
    ctx = context(request)
    uid = _uid(sop_uid, "SOP Instance UID")
    rows = _rows(
        ctx.archive.engine,
        select(*_INSTANCE_COLS)
        .join(SERIES, SERIES.c.id == INSTANCE.c.series_fk)
        .join(STUDY, STUDY.c.id == SERIES.c.study_fk)
        .where(INSTANCE.c.sop_instance_uid == uid),
    )
    if not rows:
        raise HTTPException(404, f"no instance {uid}")
    return rows[0]


def _exists_or_404(ctx: Any, column: Any, uid: str, what: str) -> None:
    with ctx.archive.engine.connect() as conn:
        if conn.execute(select(column).where(column == uid)).first() is None:
            raise HTTPException(404, f"no {what} {uid}")


# == archive: delete =======================================================================
def _deleted(ctx: Any, p: Principal, level: str, uid: str) -> dict[str, Any]:
    func = {
        "study": ctx.deletion.delete_study,
        "series": ctx.deletion.delete_series,
        "instance": ctx.deletion.delete_instance,
    }[level]
    try:
        result = func(uid, user=p.username, client=p.client, via="REST: ")  # audits
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    ctx.archive.ingest.parents.clear()  # cached parent row ids may name deleted rows
    return {
        "deleted": level,
        "uid": uid,
        "study_instance_uid": result.study_uid,
        "instances": result.instances,
        "series": result.series,
        "bytes": result.bytes,
    }


_PATIENT_KEYS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex")
_PATIENT_RETURN = (
    *_PATIENT_KEYS,
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
)


def _patient_id(value: str) -> str:
    """Patient ID (LO, PS3.5 §6.2): at most 64 characters, no backslash or control
    characters."""
    if not value or len(value) > 64 or "\\" in value or any(ord(c) < 32 for c in value):
        raise HTTPException(400, "Patient ID must be 1-64 characters without \\ or controls")
    return value


@router.get("/patients", tags=["archive"], summary="Search patients (the query engine)")
def search_patients(
    request: Request,
    _p: Annotated[Principal, Depends(require("view"))],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[dict[str, Any]]:
    """Patient-level C-FIND matching (PS3.4 §C.2.2.2, Patient Root): ``PatientName=DOE*``,
    ``PatientID=...``, ``PatientBirthDate=19700101-19791231``, ``PatientSex=F``."""
    from pacsbox.archive.query import Level, Model

    return _search_page(
        request, Level.PATIENT, Model.PATIENT_ROOT, _PATIENT_KEYS, _PATIENT_RETURN, limit, offset
    )


def _search_page(
    request: Request,
    level: Any,
    model: Any,
    allowed: Any,
    returned: Any,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """One page of a query-engine search (PS3.4 §C.2.2.2 matching) whose keys are the
    request's query parameters (``limit``/``offset`` aside); unknown keys and bad values are
    a 400. ``returned`` are the keywords answered besides the matched ones."""
    from pacsbox.archive.query import Query as DicomQuery
    from pacsbox.archive.query import QueryEngine, QueryError, match_for

    ctx = context(request)
    keys = []
    for key, value in request.query_params.multi_items():
        if key in ("limit", "offset"):
            continue
        if key not in allowed:
            raise HTTPException(
                400,
                f"unknown search key {key[:64]!r}; use one of " + ", ".join(sorted(allowed)),
            )
        try:
            keys.append(match_for(key, value))
        except QueryError as exc:
            raise HTTPException(400, str(exc)) from exc
    matched = {m.keyword for m in keys}
    query = DicomQuery(
        level=level,
        model=model,
        keys=keys,
        include=[k for k in returned if k not in matched],
        pn_case_insensitive=ctx.settings.pn_case_insensitive,
    )
    try:
        query.validate()
        rows = QueryEngine(ctx.archive.engine).run(query)
        try:
            return [dict(row.values) for row in islice(rows, offset, offset + limit)]
        finally:
            rows.close()  # type: ignore[attr-defined]
    except QueryError as exc:
        raise HTTPException(400, str(exc)) from exc


def _patient_studies(ctx: Any, patient_id: str, issuer: str | None) -> list[str]:
    cond = PATIENT.c.patient_id == patient_id
    if issuer is not None:
        cond = and_(cond, PATIENT.c.issuer_of_patient_id == issuer)
    with ctx.archive.engine.connect() as conn:
        return [
            r.study_instance_uid
            for r in conn.execute(
                select(STUDY.c.study_instance_uid)
                .join(PATIENT, PATIENT.c.id == STUDY.c.patient_fk)
                .where(cond)
                .order_by(STUDY.c.study_date, STUDY.c.id)
            )
        ]


@router.get("/patients/{patient_id}", tags=["archive"], summary="One patient and its studies")
def get_patient(
    patient_id: str,
    request: Request,
    p: Principal = Depends(require("view")),
    issuer: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """The patient rows with this Patient ID (one per Issuer of Patient ID, or only
    ``issuer``) and the Study Instance UIDs of their studies."""
    ctx = context(request)
    pid = _patient_id(patient_id)
    cond = PATIENT.c.patient_id == pid
    if issuer is not None:
        cond = and_(cond, PATIENT.c.issuer_of_patient_id == issuer)
    rows = _rows(
        ctx.archive.engine,
        select(
            PATIENT.c.patient_id,
            PATIENT.c.issuer_of_patient_id,
            PATIENT.c.patient_name,
            PATIENT.c.patient_birth_date,
            PATIENT.c.patient_sex,
            PATIENT.c.num_studies,
            PATIENT.c.num_series,
            PATIENT.c.num_instances,
        ).where(cond),
    )
    if not rows:
        raise HTTPException(404, f"no patient {pid}")
    _audit_read(ctx, p, f"patient details {pid}")
    return {"patients": rows, "studies": _patient_studies(ctx, pid, issuer)}


@router.delete("/patients/{patient_id}", tags=["archive"], summary="Delete a patient")
def delete_patient(
    patient_id: str,
    request: Request,
    p: Principal = Depends(require("delete")),
    issuer: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """Deletes every study of the patient (each audited); the emptied patient row goes too."""
    ctx = context(request)
    pid = _patient_id(patient_id)
    studies = _patient_studies(ctx, pid, issuer)
    if not studies:
        raise HTTPException(404, f"no patient {pid}")
    deleted = [_deleted(ctx, p, "study", uid) for uid in studies]
    return {
        "deleted": "patient",
        "patient_id": pid,
        "studies": len(deleted),
        "instances": sum(d["instances"] for d in deleted),
        "bytes": sum(d["bytes"] for d in deleted),
    }


@router.delete("/studies/{study_uid}", tags=["archive"], summary="Delete a study")
def delete_study(
    study_uid: str, request: Request, p: Principal = Depends(require("delete"))
) -> dict[str, Any]:
    return _deleted(context(request), p, "study", _uid(study_uid, "Study Instance UID"))


@router.delete("/series/{series_uid}", tags=["archive"], summary="Delete a series")
def delete_series(
    series_uid: str, request: Request, p: Principal = Depends(require("delete"))
) -> dict[str, Any]:
    return _deleted(context(request), p, "series", _uid(series_uid, "Series Instance UID"))


@router.delete("/instances/{sop_uid}", tags=["archive"], summary="Delete an instance")
def delete_instance(
    sop_uid: str, request: Request, p: Principal = Depends(require("delete"))
) -> dict[str, Any]:
    return _deleted(context(request), p, "instance", _uid(sop_uid, "SOP Instance UID"))


# == archive: export =======================================================================
class _Sink:
    """A write-only file object for zipfile that hands out what was written (streaming)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.offset = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def _zip_stream(
    store: Any, dicomdir: bytes, files: list[tuple[FileSetInstance, str]]
) -> Iterator[bytes]:
    """Stored (uncompressed: DICOM pixel data rarely shrinks) zip of a File-set: the DICOMDIR
    first, then each instance under its file ID, produced chunk by chunk with bounded memory.
    Instances stored without their File Meta (``storage_format = "native"``) get it here."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:  # type: ignore[arg-type]
        zf.writestr("DICOMDIR", dicomdir)
        yield sink.take()
        for inst, name in files:
            try:
                path = store.locate(inst.key, inst.linked)
                fh = open(path, "rb")  # noqa: SIM115
            except (OSError, ValueError):
                continue  # a file that went missing is reported by `pacsbox check`
            with fh, zf.open(name, "w", force_zip64=True) as entry:
                if inst.storage_format != "part10":
                    entry.write(
                        encode_file_meta(
                            inst.sop_class_uid, inst.sop_instance_uid, inst.transfer_syntax_uid
                        )
                    )
                while chunk := fh.read(1 << 20):
                    entry.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()


def file_set_members(engine: Any, column: Any, uid: str) -> list[FileSetInstance]:
    """The instances whose ``column`` (study or series UID) is ``uid``, as File-set members
    (PS3.10 §8) in series/instance order, with the stored JSON of objects without pixel data
    (their DICOMDIR records need it). Shared by the zip export and share-link downloads."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                PATIENT.c.patient_id,
                PATIENT.c.issuer_of_patient_id,
                PATIENT.c.patient_name,
                STUDY.c.study_instance_uid,
                STUDY.c.study_date,
                STUDY.c.study_time,
                STUDY.c.study_description,
                STUDY.c.study_id,
                STUDY.c.accession_number,
                STUDY.c.received_at.label("study_received_at"),
                SERIES.c.series_instance_uid,
                SERIES.c.modality,
                SERIES.c.series_number,
                INSTANCE.c.sop_class_uid,
                INSTANCE.c.sop_instance_uid,
                INSTANCE.c.transfer_syntax_uid,
                INSTANCE.c.instance_number,
                INSTANCE.c.file_path.label("key"),
                INSTANCE.c.linked,
                INSTANCE.c.storage_format,
                INSTANCE.c.rows,
            )
            .join(SERIES, SERIES.c.id == INSTANCE.c.series_fk)
            .join(STUDY, STUDY.c.id == SERIES.c.study_fk)
            .join(PATIENT, PATIENT.c.id == STUDY.c.patient_fk)
            .where(column == uid)
            .order_by(
                SERIES.c.series_number, SERIES.c.id, INSTANCE.c.instance_number, INSTANCE.c.id
            )
        ).all()
        no_pixels = [r.sop_instance_uid for r in rows if r.rows is None]
        attributes: dict[str, str] = {}
        for i in range(0, len(no_pixels), 500):
            attributes.update(
                conn.execute(
                    select(INSTANCE.c.sop_instance_uid, INSTANCE.c.attributes).where(
                        INSTANCE.c.sop_instance_uid.in_(no_pixels[i : i + 500])
                    )
                ).all()
            )
    return [
        FileSetInstance(
            **{**r._mapping, "linked": bool(r.linked)},
            attributes=attributes.get(r.sop_instance_uid),
        )
        for r in rows
    ]


def _export(ctx: Any, p: Principal, level: str, uid: str) -> StreamingResponse:
    column = STUDY.c.study_instance_uid if level == "study" else SERIES.c.series_instance_uid
    members = file_set_members(ctx.archive.engine, column, uid)
    if not members:
        raise HTTPException(404, f"no {level} {uid}")
    plan = plan_file_set(members)
    files = [(inst, "/".join(file_id)) for inst, file_id in plan.files]
    ctx.audit.record(
        "export",
        user=p.username,
        client=p.client,
        study_uid=members[0].study_instance_uid,
        series_uid=uid if level == "series" else "",
        detail=f"zip download of {level} ({len(files)} instance(s))",
    )
    return StreamingResponse(
        _zip_stream(ctx.archive.store, plan.dicomdir, files),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{uid}.zip"'},
    )


@router.get("/studies/{study_uid}/archive", tags=["archive"], summary="Study as a zip")
def export_study(
    study_uid: str, request: Request, p: Principal = Depends(require("export"))
) -> Response:
    """A streamed zip holding the study as a DICOM File-set (PS3.10 §8): ``DICOMDIR`` plus
    ``DICOM/PTnnnnnn/STnnnnnn/SEnnnnnn/IMnnnnnn`` files (see archive/dicomdir.py)."""
    return _export(context(request), p, "study", _uid(study_uid, "Study Instance UID"))


@router.get("/series/{series_uid}/archive", tags=["archive"], summary="Series as a zip")
def export_series(
    series_uid: str, request: Request, p: Principal = Depends(require("export"))
) -> Response:
    return _export(context(request), p, "series", _uid(series_uid, "Series Instance UID"))
