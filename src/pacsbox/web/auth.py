"""HTTP authentication and authorisation (SPEC E3, R3).

Three ways to authenticate, tried in this order:

1. ``Authorization: Bearer <API token>`` (RFC 6750) — tokens made per user, stored hashed;
2. ``Authorization: Basic`` (RFC 7617) — user name and password on every request. A verified
   pair is remembered in this process for ``BASIC_CACHE_SECONDS`` (keyed by an HMAC of the
   pair with a per-process secret, checked against the current password hash) so argon2 does
   not run for every request;
3. the login-session cookie ``pacsbox_session`` (HttpOnly, SameSite=Strict, Secure under
   HTTPS). Requests that change state (anything but GET/HEAD/OPTIONS) with the cookie must
   carry the session's CSRF token in ``X-CSRF-Token`` (or a ``csrf_token`` form field); it is
   returned by the login and also set in the readable ``pacsbox_csrf`` cookie (double submit).

Failed password checks (login and Basic) count against the user name and the client address
(:class:`pacsbox.archive.users.LoginThrottling`); while either is backed off the answer is 429
with ``Retry-After`` and the password is not even checked.

Every route declares its privilege with ``Depends(require("view"))`` etc.; routers added
later (DICOMweb under ``/dicom-web``, WADO-URI under ``/wado``) use the same dependency.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from pacsbox.archive.users import SessionInfo, User

if TYPE_CHECKING:
    from pacsbox.web.app import WebContext

SESSION_COOKIE = "pacsbox_session"
CSRF_COOKIE = "pacsbox_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BASIC_CACHE_SECONDS = 60.0
BASIC_CACHE_SIZE = 1024
CHALLENGE = {"WWW-Authenticate": 'Basic realm="pacsbox", charset="UTF-8"'}


@dataclass(frozen=True)
class Principal:
    """Who is calling, how they authenticated, and from where."""

    user: User
    method: str  # "session" | "basic" | "token"
    client: str
    session: SessionInfo | None = None

    @property
    def username(self) -> str:
        return self.user.username


def unauthorized(message: str = "authentication required") -> HTTPException:
    return HTTPException(401, message, headers=CHALLENGE)


def throttled(seconds: int) -> HTTPException:
    return HTTPException(
        429,
        f"too many failed logins; try again in {seconds} s",
        headers={"Retry-After": str(max(1, seconds))},
    )


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def context(request: Request) -> WebContext:
    return request.app.state.pacs


class BasicCache:
    """Recently verified Basic credentials of this process (bounded, short-lived)."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)
        self._entries: dict[bytes, tuple[float, str, str]] = {}
        self._lock = threading.Lock()

    def key(self, username: str, password: str) -> bytes:
        data = username.encode("utf-8") + b"\0" + password.encode("utf-8")
        return hmac.new(self._secret, data, hashlib.sha256).digest()

    def get(self, key: bytes) -> tuple[str, str] | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1], entry[2]

    def put(self, key: bytes, username: str, password_hash: str) -> None:
        with self._lock:
            if len(self._entries) >= BASIC_CACHE_SIZE:
                now = time.monotonic()
                self._entries = {k: v for k, v in self._entries.items() if v[0] >= now}
                if len(self._entries) >= BASIC_CACHE_SIZE:
                    self._entries.clear()
            self._entries[key] = (time.monotonic() + BASIC_CACHE_SECONDS, username, password_hash)


def check_password_login(ctx: WebContext, username: str, password: str, client: str) -> User:
    """A password login (form/JSON login or Basic): throttled, audited when it fails."""
    wait = ctx.throttle.retry_after(username, client)
    if wait:
        ctx.audit.record(
            "login-failed",
            user=username[:64],
            client=client,
            outcome="denied",
            detail=f"throttled ({wait} s left)",
        )
        raise throttled(wait)
    user = ctx.users.verify_password(username, password)
    if user is None:
        backoff = ctx.throttle.failed(username, client)
        ctx.audit.record(
            "login-failed",
            user=username[:64],
            client=client,
            outcome="failure",
            detail="wrong user name or password, or account disabled",
        )
        if backoff:
            raise throttled(backoff)
        raise unauthorized("wrong user name or password")
    ctx.throttle.succeeded(username)
    return user


def _basic(ctx: WebContext, value: str, client: str) -> User:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise unauthorized("malformed Basic credentials") from exc
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        raise unauthorized("malformed Basic credentials")
    key = ctx.basic_cache.key(username, password)
    cached = ctx.basic_cache.get(key)
    if cached is not None and ctx.users.password_hash(username) == cached[1]:
        user = ctx.users.get(username)
        if user is not None and user.enabled:
            return user
    user = check_password_login(ctx, username, password, client)
    stored = ctx.users.password_hash(username)
    if stored:
        ctx.basic_cache.put(key, username, stored)
    return user


async def _csrf_ok(request: Request, expected: str) -> bool:
    supplied = request.headers.get(CSRF_HEADER)
    if supplied is None:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            value = form.get(CSRF_FIELD)
            supplied = value if isinstance(value, str) else None
    return supplied is not None and hmac.compare_digest(supplied.encode(), expected.encode())


async def authenticate(request: Request) -> Principal:
    """FastAPI dependency: the caller, or 401 (429 when throttled, 403 on a CSRF failure)."""
    ctx = context(request)
    client = client_address(request)
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            user = await run_in_threadpool(ctx.users.resolve_token, value.strip())
            if user is None:
                raise unauthorized("invalid, expired or revoked API token")
            principal = Principal(user, "token", client)
        elif scheme == "basic":
            user = await run_in_threadpool(_basic, ctx, value, client)
            principal = Principal(user, "basic", client)
        else:
            raise unauthorized(f"unsupported authorization scheme {scheme[:20]!r}")
    else:
        sid = request.cookies.get(SESSION_COOKIE)
        if not sid:
            raise unauthorized()
        info = await run_in_threadpool(
            ctx.users.resolve_session, sid, ctx.settings.session_idle_timeout
        )
        if info is None:
            raise unauthorized("session expired or ended; log in again")
        if request.method not in SAFE_METHODS and not await _csrf_ok(request, info.csrf_token):
            request.state.user = info.user.username
            raise HTTPException(403, "CSRF token missing or wrong (send X-CSRF-Token)")
        principal = Principal(info.user, "session", client, info)
    request.state.user = principal.username
    return principal


def require(privilege: str | None, *, allow_password_change: bool = False) -> Any:
    """Dependency factory: an authenticated caller holding ``privilege`` (None: any user).

    An account that must change its password (the generated default admin) may only use the
    routes marked ``allow_password_change`` (its own details, the password change, logout).
    The dedicated WADO account (setting ``wado_user``) is refused here: it may only use
    ``/wado`` (pacsbox.web.wado_uri), which authenticates on its own.
    """

    async def dependency(
        request: Request, principal: Principal = Depends(authenticate)
    ) -> Principal:
        wado_user = context(request).settings.wado_user
        if wado_user and principal.username == wado_user:
            # the dedicated WADO account (setting wado_user) reads images through /wado only
            raise HTTPException(403, "this account may only be used for WADO-URI (/wado)")
        if principal.user.must_change_password and not allow_password_change:
            raise HTTPException(403, "the password must be changed first: POST /api/me/password")
        if privilege is not None and not principal.user.has(privilege):
            raise HTTPException(403, f"the {privilege!r} privilege is required")
        return principal

    dependency.__name__ = f"require_{privilege or 'user'}"
    return dependency
