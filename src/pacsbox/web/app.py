"""The HTTP application (DESIGN.md ``web/``): :func:`create_app` builds the FastAPI app on an
:class:`~pacsbox.app.Archive`.

- Every route is authenticated and authorised (SPEC R3) through :func:`pacsbox.web.auth.require`
  — except ``/health``, the login action ``POST /api/login`` and the browser application's
  static files (``/``, ``/ui/*``, ``/login`` redirects to ``/#/login``; pacsbox.web.ui).
  The OpenAPI document (``/api/openapi.json``) and its docs page (``/api/docs``) need a login
  too. Routers added later plug in the same way: DICOMweb (PS3.18) under ``/dicom-web``,
  WADO-URI (PS3.18 §9) under ``/wado``, each route with ``Depends(require("view"))``.
- Errors are JSON ``{"error": {"status": <int>, "message": <str>}}`` for every 4xx/5xx;
  request validation errors are 400.
- One log line per request on logger ``pacsbox.http``: method, path (secret query values
  masked), status, user, milliseconds. Nothing else in the request is logged.
- Paths with ``.``/``..`` segments or NUL bytes are refused with 400 before routing (R2).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacsbox import __version__
from pacsbox.archive.audit import AuditLog
from pacsbox.archive.deletion import ArchiveDeletion
from pacsbox.archive.users import LoginThrottling, UserDirectory
from pacsbox.settings import Settings
from pacsbox.web.auth import BasicCache, Principal, authenticate, require
from pacsbox.web.metrics import Metrics

log = logging.getLogger("pacsbox.http")
#: query parameters whose values never reach the log
SECRET_PARAMS = frozenset(
    {"password", "passwd", "pw", "token", "access_token", "csrf_token", "key", "secret"}
)
#: routes reachable without credentials (SPEC R3)
PUBLIC_ROUTES = frozenset(
    {"/health", "/login", "/api/login", "/", "/ui/{path:path}", "/api/ui-config"}
)
#: the OHIF viewer's static files (pacsbox.web.viewer): public, they hold no data
PUBLIC_ROUTES = PUBLIC_ROUTES | frozenset({"/viewer/ohif", "/viewer/ohif/{path:path}"})
#: one-time-password login (pacsbox.web.otp) and share links (pacsbox.web.share: the token in
#: the path is the credential)
PUBLIC_ROUTES = PUBLIC_ROUTES | frozenset(
    {
        "/api/otp",
        "/api/otp/login",
        "/share/{token}",
        "/share/{token}/archive",
        "/share/{token}/series/{series}/thumbnail",
        "/share/{token}/series/{series}/instances/{sop}/rendered",
    }
)


@dataclass
class WebContext:
    """The services the routes use (one per app, shared by its threads)."""

    archive: Any  # pacsbox.app.Archive
    settings: Settings
    users: UserDirectory
    throttle: LoginThrottling
    audit: AuditLog
    deletion: ArchiveDeletion
    metrics: Metrics
    basic_cache: BasicCache


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"status": status, "message": message}}


def _masked_query(query: str) -> str:
    if not query:
        return ""
    parts = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        shown = "***" if key.lower() in SECRET_PARAMS else value
        parts.append(f"{quote(key)}={quote(shown, safe='*')}")
    return "?" + "&".join(parts)


class RequestLogMiddleware:
    """Pure ASGI (streaming responses pass through untouched): path checks, the access log
    line and the request metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        path = scope.get("path", "")
        raw = scope.get("raw_path") or path.encode("utf-8", "replace")

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if _bad_path(path, raw):
                response = JSONResponse(error_body(400, "bad path"), status_code=400)
                await response(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - start
            template = _route_template(scope, path)
            user = (scope.get("state") or {}).get("user", "-")
            query = scope.get("query_string", b"").decode("latin-1")
            log.info(
                "%s %s %d user=%s %.1fms",
                scope.get("method", "-"),
                _masked_path(path) + _masked_query(query),
                status,
                user,
                seconds * 1000,
            )
            self.metrics.observe(scope.get("method", "-"), template, status, seconds)


def _masked_path(path: str) -> str:
    """The path as logged: a share link's token (``/share/<token>/...``) becomes ``***``."""
    if path.startswith("/share/"):
        _, _, rest = path[len("/share/") :].partition("/")
        return "/share/***" + (f"/{rest}" if rest else "")
    return path


def _route_template(scope: Scope, path: str) -> str:
    """The matched route as a template (``/api/studies/{study_uid}``): a bounded metric
    label. Unmatched paths (404s) all count as ``-``."""
    if scope.get("route") is None:
        return "-"
    template = path
    for name, value in (scope.get("path_params") or {}).items():
        template = template.replace(f"/{value}", "/{" + name + "}", 1)
    return template


def _bad_path(path: str, raw: bytes) -> bool:
    if "\x00" in path or b"%00" in raw:
        return True
    raw_text = unquote(raw.decode("latin-1"))
    for candidate in (path, raw_text):
        if any(seg in (".", "..") for seg in candidate.replace("\\", "/").split("/")):
            return True
    return False


def create_app(archive: Any, settings: Settings | None = None) -> FastAPI:
    """The FastAPI application serving ``archive`` (an :class:`pacsbox.app.Archive`)."""
    settings = settings or archive.settings
    metrics = Metrics(archive.engine)
    ctx = WebContext(
        archive=archive,
        settings=settings,
        users=UserDirectory(archive.engine),
        throttle=LoginThrottling(
            archive.engine,
            max_failures=settings.login_max_failures,
            max_failures_ip=settings.login_max_failures_ip,
            max_lockout=settings.login_max_lockout,
        ),
        audit=AuditLog(archive.engine),
        deletion=ArchiveDeletion(archive.engine, archive.store),
        metrics=metrics,
        basic_cache=BasicCache(),
    )
    app = FastAPI(
        title="pacsbox",
        version=__version__,
        description="pacsbox REST API. Authenticate with a session (POST /api/login), "
        "HTTP Basic or an API token (Authorization: Bearer).",
        openapi_url=None,  # served below, behind authentication
        docs_url=None,
        redoc_url=None,
    )
    app.state.pacs = ctx

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{loc}: {err.get('msg', 'invalid')}")
        return JSONResponse(error_body(400, "; ".join(problems)[:2000]), status_code=400)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, _masked_path(request.url.path))
        return JSONResponse(error_body(500, "internal server error"), status_code=500)

    app.add_middleware(RequestLogMiddleware, metrics=metrics)
    from pacsbox.web.ui import NoBasicPromptMiddleware

    app.add_middleware(NoBasicPromptMiddleware)  # no browser password pop-up over the app

    # -- public routes --------------------------------------------------------------------
    @app.get("/health", tags=["system"], summary="Liveness: database and storage")
    def health() -> JSONResponse:
        """No authentication. 200 when the index database answers and the storage folder is
        writable, else 503; the body says which check failed."""
        checks: dict[str, str] = {}
        try:
            with archive.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            fd, name = tempfile.mkstemp(prefix=".health-", dir=archive.store.root)
            os.close(fd)
            os.unlink(name)
            checks["storage"] = "ok"
        except OSError as exc:
            checks["storage"] = f"error: {exc.strerror or type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "error", "version": __version__, "checks": checks},
            status_code=200 if ok else 503,
        )

    # -- authenticated system routes ------------------------------------------------------
    @app.get("/metrics", tags=["system"], summary="Prometheus metrics")
    async def metrics_route(request: Request) -> Response:
        """Prometheus text format. An admin user, or ``Authorization: Bearer
        <metrics_token>`` when that setting is set."""
        token = settings.metrics_token
        header = request.headers.get("authorization", "")
        if not (token and _same(header, f"Bearer {token}")):
            principal = await authenticate(request)
            if principal.user.must_change_password or not principal.user.has("admin"):
                raise HTTPException(403, "the 'admin' privilege (or the metrics token) is required")
        body = await run_in_threadpool(metrics.exposition)
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/api/openapi.json", tags=["system"], include_in_schema=False)
    def openapi(_p: Principal = Depends(require(None, allow_password_change=True))) -> Any:
        return JSONResponse(app.openapi())

    @app.get("/api/docs", tags=["system"], include_in_schema=False)
    def docs(_p: Principal = Depends(require(None, allow_password_change=True))) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/api/openapi.json", title="pacsbox API")

    from pacsbox.web.api import router as api_router

    app.include_router(api_router, prefix="/api")
    from pacsbox.web.studylist import router as studylist_router

    app.include_router(studylist_router, prefix="/api")  # study list, dashboard, forward
    from pacsbox.web.rendered import router as rendered_router
    from pacsbox.web.wado_uri import router as wado_router

    app.include_router(rendered_router, prefix="/dicom-web")  # WADO-RS rendered/thumbnail
    app.include_router(wado_router)  # WADO-URI at /wado (authenticates on its own)
    from pacsbox.web.viewer import api_router as viewer_api_router
    from pacsbox.web.viewer import router as viewer_router

    app.include_router(viewer_api_router, prefix="/api")  # SR report, encapsulated document
    app.include_router(viewer_router)  # OHIF static files under /viewer/ohif/ (public)
    from pacsbox.web.otp import router as otp_router
    from pacsbox.web.share import api_router as share_api_router
    from pacsbox.web.share import public_router as share_public_router

    app.include_router(otp_router, prefix="/api")  # HIS/RIS one-time-password login (public)
    app.include_router(share_api_router, prefix="/api")  # share links (privilege share)
    app.include_router(share_public_router)  # /share/{token}: page, images, zip (public)
    from pacsbox.web.dicomweb import install as install_dicomweb

    install_dicomweb(app, settings)  # DICOMweb router under /dicom-web (+ CORS when set)
    from pacsbox.web.ui import router as ui_router

    app.include_router(ui_router)  # the browser application: /, /ui/*, /login -> /#/login
    return app


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())
