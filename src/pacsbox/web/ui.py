"""The browser application shell (SPEC E4, issue 6 item 1): static files, no build step.

- ``GET /`` answers ``ui/index.html``; ``GET /ui/{path}`` the ES modules, style sheet and
  translations under ``ui/``. Both are public (SPEC R3 still holds: the application has no
  data of its own; it asks ``/api/me`` and shows the login form on 401). Every answer carries
  a Content-Security-Policy without ``unsafe-inline`` for scripts and styles, ``nosniff``, a
  strong ETag (``If-None-Match`` → 304) and ``Cache-Control: no-cache`` so a new version is
  picked up at once while unchanged files cost a 304.
- Only files that exist below ``ui/`` with a known extension are served: anything else
  (unknown type, a directory, a path leaving the folder, odd characters) is a JSON 404.
- ``GET /login`` (the old inline login page) redirects to ``/#/login``.
- :class:`NoBasicPromptMiddleware`: API answers to the application (requests carrying
  ``X-Requested-With: pacsbox-ui``) lose the ``WWW-Authenticate: Basic`` challenge of a 401
  (RFC 7235 §4.1), so browsers do not pop up their own password dialog over the login form.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

router = APIRouter()

UI_DIR = Path(__file__).with_name("ui")
#: the request header the application sends with every API call
UI_HEADER = b"x-requested-with"
UI_HEADER_VALUE = b"pacsbox-ui"
CHALLENGE = b"www-authenticate"

MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}

#: scripts and styles only from this origin (no inline code); images also from data:/blob:
#: URLs (thumbnails built in the page); frames only from this origin (SR/PDF documents).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "SAMEORIGIN",
}
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*\.[a-z0-9]+$")


@lru_cache(maxsize=256)
def _load(path: Path, mtime_ns: int, size: int) -> tuple[bytes, str]:
    """File bytes and their ETag, cached per (path, mtime, size)."""
    data = path.read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def _asset(relative: str, request: Request) -> Response:
    if len(relative) > 200 or not _SAFE_PATH.match(relative):
        raise HTTPException(404, "no such file")
    path = (UI_DIR / relative).resolve()
    root = UI_DIR.resolve()
    if root not in path.parents or not path.is_file():
        raise HTTPException(404, "no such file")
    media_type = MIME_TYPES.get(path.suffix)
    if media_type is None:
        raise HTTPException(404, "no such file")
    st = path.stat()
    data, etag = _load(path, st.st_mtime_ns, st.st_size)
    headers = {**SECURITY_HEADERS, "ETag": etag, "Cache-Control": "no-cache"}
    if etag in [v.strip() for v in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)


@router.get("/", tags=["ui"], include_in_schema=False)
def index(request: Request) -> Response:
    """The application page (public; the data behind it is not)."""
    return _asset("index.html", request)


@router.get("/ui/{path:path}", tags=["ui"], include_in_schema=False)
def asset(path: str, request: Request) -> Response:
    """A static file of the application: JS module, CSS, translation, icon."""
    return _asset(path, request)


@router.get("/login", tags=["auth"], include_in_schema=False)
def login_page() -> RedirectResponse:
    """The login form lives in the application now."""
    return RedirectResponse("/#/login", status_code=302)


class NoBasicPromptMiddleware:
    """Drops ``WWW-Authenticate`` from 401 answers to the application's own requests."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (UI_HEADER, UI_HEADER_VALUE) not in scope.get("headers", []):
            await self.app(scope, receive, send)
            return

        async def strip(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                message = dict(message)
                headers = message.get("headers", [])
                message["headers"] = [(k, v) for k, v in headers if k.lower() != CHALLENGE]
            await send(message)

        await self.app(scope, receive, strip)
