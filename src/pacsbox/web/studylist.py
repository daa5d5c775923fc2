"""Web UI back-end routes under ``/api`` (SPEC E4): the study list, the dashboard, forwarding
a study to a registered AE, and the public UI configuration.

- ``GET /api/studylist`` — the E4 search (archive/studylist.py parses the URL parameters and
  builds the SQL); ``X-Server-Time-Ms`` tells how long the handler took.
- ``GET /api/dashboard`` — counts, storage, arrivals of the last 24 h by source AE and the
  listeners' state (a TCP connect to each configured port).
- ``POST /api/studies/{uid}/forward`` — C-STORE (PS3.4 Annex B, PS3.7 §9.1.1) of every
  instance of the study to a registered destination on one association, with the lean storage
  requestor the C-MOVE SCP uses (files as stored, transcoded only when the peer does not take
  the stored transfer syntax).
- ``GET /api/ui-config`` — public: institution name, whether URL login is on, languages,
  version. Nothing secret.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import distinct, func, select

from pacsbox import __version__
from pacsbox.archive.index.writer import INSTANCE, PATIENT, SERIES, STUDY, utcnow
from pacsbox.archive.storage import InvalidUID, check_uid
from pacsbox.archive.studylist import StudyList, StudyListError, parse
from pacsbox.web.auth import Principal, context, require

router = APIRouter()

#: Languages the UI ships (SPEC E4: English first, at least one more).
LANGUAGES = ["en", "it"]
LISTENER_CONNECT_TIMEOUT = 0.3


# == study list ============================================================================
@router.get("/studylist", tags=["archive"], summary="Study list search (E4 URL parameters)")
def study_list(
    request: Request,
    p: Annotated[Principal, Depends(require("view"))],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> JSONResponse:
    """Parameters ``key<op>value`` (SPEC E4; see docs/admin.md "Study list"), ``sort``
    (``-studydate,patientname``), ``limit`` (1-500, default 50), ``offset``. Answers
    ``{"total", "items"}``; 400 with a message on an unknown key, operator or bad value."""
    started = time.perf_counter()
    ctx = context(request)
    try:
        query = parse(request.query_params.multi_items())
    except StudyListError as exc:
        raise HTTPException(400, str(exc)) from exc
    page = StudyList(
        ctx.archive.engine, pn_case_insensitive=ctx.settings.pn_case_insensitive
    ).search(query, limit=limit, offset=offset)
    ctx.audit.record(
        "read",
        user=p.username,
        client=p.client,
        detail=f"study list ({page.total} match(es)): {request.url.query[:400]}",
    )
    elapsed = (time.perf_counter() - started) * 1000
    return JSONResponse(
        {"total": page.total, "items": page.items},
        headers={"X-Server-Time-Ms": f"{elapsed:.1f}"},
    )


# == dashboard =============================================================================
def _accepting(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=LISTENER_CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def _listeners(settings: Any) -> list[dict[str, Any]]:
    bind = settings.bind_address
    host = "127.0.0.1" if bind in ("", "0.0.0.0", "::", "localhost") else bind
    tls_configured = bool(settings.tls_cert and settings.tls_key)
    http_tls = bool(settings.http_tls_files)
    rows = [
        ("dicom", settings.dicom_port, {"ae_title": settings.ae_title}),
        (
            "dicom-tls",
            settings.dicom_tls_port if tls_configured else 0,
            {"ae_title": settings.ae_title},
        ),
        ("https" if http_tls else "http", settings.http_port, {}),
        ("hl7", settings.hl7_port, {}),
    ]
    out = []
    for name, port, extra in rows:
        enabled = bool(port)
        out.append(
            {
                "name": name,
                "port": int(port or 0),
                **extra,
                "enabled": enabled,
                "accepting": enabled and _accepting(host, int(port)),
            }
        )
    return out


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    return None


@router.get("/dashboard", tags=["system"], summary="Archive overview for the dashboard")
def dashboard(request: Request, _p: Annotated[Principal, Depends(require("view"))]) -> dict:
    """Counts, bytes stored (sum of the stored files' sizes), free space of the data folder,
    arrivals of the last 24 hours by source AE (instances, studies), the last arrival and the
    listeners (``accepting``: a TCP connect to the port answered; port 0 = disabled)."""
    ctx = context(request)
    engine = ctx.archive.engine
    since = utcnow() - timedelta(hours=24)
    with engine.connect() as conn:
        # series/instances/bytes from the study counters the index writer keeps: one pass
        # over the study table, not over a million instance rows (the list polls this)
        studies, series, instances, stored = conn.execute(
            select(
                func.count(),
                func.coalesce(func.sum(STUDY.c.num_series), 0),
                func.coalesce(func.sum(STUDY.c.num_instances), 0),
                func.coalesce(func.sum(STUDY.c.size_bytes), 0),
            )
        ).one()
        patients = conn.execute(select(func.count()).select_from(PATIENT)).scalar_one()
        counts = {
            "patients": int(patients),
            "studies": int(studies),
            "series": int(series),
            "instances": int(instances),
        }
        last = conn.execute(select(func.max(INSTANCE.c.received_at))).scalar_one()
        arrivals = conn.execute(
            select(
                INSTANCE.c.source_ae,
                func.count(),
                func.count(distinct(SERIES.c.study_fk)),
            )
            .select_from(INSTANCE.join(SERIES, SERIES.c.id == INSTANCE.c.series_fk))
            .where(INSTANCE.c.received_at >= since)
            .group_by(INSTANCE.c.source_ae)
            .order_by(func.count().desc(), INSTANCE.c.source_ae)
        ).all()
    root = ctx.archive.store.root
    try:
        usage = shutil.disk_usage(root)
        disk = {"path": str(root), "total": usage.total, "free": usage.free, "used": usage.used}
    except OSError as exc:
        disk = {"path": str(root), "error": exc.strerror or type(exc).__name__}
    return {
        "counts": counts,
        "bytes_stored": int(stored or 0),
        "disk": disk,
        "arrivals_24h": [
            {"source_ae": ae or "", "instances": int(n), "studies": int(s)} for ae, n, s in arrivals
        ],
        "last_arrival": _iso(last),
        "listeners": _listeners(ctx.settings),
        "version": __version__,
    }


# == forward ===============================================================================
class ForwardBody(BaseModel):
    ae_title: str = Field(min_length=1, max_length=16)


@router.post("/studies/{study_uid}/forward", tags=["archive"], summary="Send a study to an AE")
def forward(
    study_uid: str,
    body: ForwardBody,
    request: Request,
    p: Annotated[Principal, Depends(require("forward"))],
) -> dict[str, Any]:
    """C-STORE the study to a registered destination AE, synchronously. 404 for an unknown
    study or AE, 409 when the AE is disabled or not a destination, 502 when the association
    fails. Audited as an export."""
    from pacsbox.dicom.forward import forward_study
    from pacsbox.dicom.storage_requestor import AssociationFailed

    ctx = context(request)
    try:
        uid = check_uid(study_uid, "Study Instance UID")
    except InvalidUID as exc:
        raise HTTPException(400, str(exc)) from exc
    with ctx.archive.engine.connect() as conn:
        found = conn.execute(select(STUDY.c.id).where(STUDY.c.study_instance_uid == uid)).first()
    if found is None:
        raise HTTPException(404, f"no study {uid}")
    dest = ctx.archive.registry.get(body.ae_title)
    if dest is None:
        raise HTTPException(404, f"AE title {body.ae_title!r} is not registered")
    if not dest.enabled or not dest.is_destination:
        raise HTTPException(409, f"AE {dest.ae_title!r} is not an enabled destination")
    target = f"{dest.ae_title}@{dest.host}:{dest.port}"
    try:
        result = forward_study(ctx.archive, uid, dest)
    except (AssociationFailed, OSError, ssl.SSLError) as exc:
        ctx.audit.record(
            "export",
            user=p.username,
            client=p.client,
            outcome="failure",
            study_uid=uid,
            object=f"ae:{dest.ae_title}",
            detail=f"forward to {target}: {exc}"[:500],
        )
        raise HTTPException(502, f"cannot send to {target}: {exc}") from exc
    ctx.audit.record(
        "export",
        user=p.username,
        client=p.client,
        outcome="success" if result["failed"] == 0 else "failure",
        study_uid=uid,
        object=f"ae:{dest.ae_title}",
        detail=(
            f"forward to {target}: {result['sent']} sent, {result['warnings']} warning(s), "
            f"{result['failed']} failed"
        ),
    )
    return {"ae_title": dest.ae_title, **result}


# == UI configuration (public) =============================================================
@router.get("/ui-config", tags=["system"], summary="Public UI configuration")
def ui_config(request: Request) -> dict[str, Any]:
    """No authentication: what the login page and the UI shell need before login."""
    settings = context(request).settings
    return {
        "institution_name": settings.institution_name,
        "url_login": bool(settings.url_login_enabled),
        "languages": LANGUAGES,
        "version": __version__,
    }
