"""HIS/RIS one-time-password login (SPEC E6): ``GET /api/otp`` and ``POST /api/otp/login``.

A HIS/RIS that opens the web UI for a user must not put the password in the URL. Instead:

1. it asks ``GET /api/otp`` (no authentication) for a one-time RSA public key: a fresh RSA
   2048 key pair (RFC 8017) per call; the answer is ``{"key_id", "public_key": <PEM,
   SubjectPublicKeyInfo>, "algorithm": "RSA-OAEP-SHA256", "expires_in": <s>}``;
2. it encrypts the UTF-8 text ``id=<user>&password=<password>`` (values percent-encoded as in
   an ``application/x-www-form-urlencoded`` query; ``{"id": ..., "password": ...}`` JSON
   works too) with RSAES-OAEP (RFC 8017 §7.1), SHA-256 as hash and MGF1-SHA-256 (MGF1-SHA-1,
   the default of Java's ``RSA/ECB/OAEPWithSHA-256AndMGF1Padding``, is accepted as well);
   with the setting ``otp_allow_pkcs1v15`` also RSAES-PKCS1-v1_5 (RFC 8017 §7.2, off by
   default: a padding-oracle risk, only for legacy clients that cannot do OAEP);
3. the code (base64 of the 256-byte ciphertext, standard or URL-safe alphabet) goes to
   ``POST /api/otp/login`` as ``{"code": ..., "key_id": ...}`` (JSON or a form; ``key_id``
   optional), typically by the browser application opening ``/#/list?code=...``. The answer
   is that of ``POST /api/login`` (200, the session and CSRF cookies, ``csrf_token``), or 401
   with a JSON error when the code is not valid (unknown, used, expired, undecryptable) or the
   credentials are wrong; 400 for a malformed request, 429 while backed off.

Single use: the key row is deleted by the login that uses it (a row-count check makes two
concurrent logins with one key fail except one); a login naming its ``key_id`` burns that key
whatever the outcome. Keys expire after ``otp_ttl_seconds`` (60) and are purged. The private
keys are kept in the index database (table ``otp_key``, migration 0004) so that any HTTP
process or node can answer; they live at most ``otp_ttl_seconds``, are never logged, and with
the setting ``otp_key_secret`` are stored AES-256-GCM encrypted (a copy of the database then
decrypts no code).

Abuse limits: a client address may hold at most ``MAX_KEYS_PER_CLIENT`` unused keys and the
server ``MAX_KEYS`` (RSA key generation costs ~50 ms of CPU); undecryptable codes count as
failed logins of the client address (:class:`pacsbox.archive.users.LoginThrottling`), wrong
credentials as failed logins of the user, with the same back-off (429 + Retry-After) as
``POST /api/login``. Every attempt is audited (``login`` / ``login-failed``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import Column, DateTime, Engine, String, Table, Text, delete, func, select
from starlette.concurrency import run_in_threadpool

from pacsbox.archive.index.models import Base
from pacsbox.archive.index.writer import utcnow
from pacsbox.web.auth import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    check_password_login,
    client_address,
    context,
    throttled,
)

router = APIRouter()

KEY_SIZE = 2048
ALGORITHM = "RSA-OAEP-SHA256"
#: unused keys one client address may hold at once
MAX_KEYS_PER_CLIENT = 10
#: unused keys the whole server may hold at once
MAX_KEYS = 1000
#: keys tried for a code sent without ``key_id`` (the client's own first, newest first)
MAX_CANDIDATES = 16
MAX_CODE_CHARS = 2048
MAX_BODY = 4 * MAX_CODE_CHARS
SEALED_PREFIX = "aesgcm:"
MAX_PLAINTEXT = 190  # RSA-OAEP-SHA256 with a 2048-bit key carries at most 190 bytes

#: migration 0004
OTP_KEY = Table(
    "otp_key",
    Base.metadata,
    Column("key_id", String(32), primary_key=True),
    Column("private_key", Text, nullable=False),
    Column("client", String(64), nullable=False, index=True),
    Column("created_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False, index=True),
)

_OAEP = (
    padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA256(), label=None),
)


class OtpError(Exception):
    """The code cannot be used (unknown/used/expired key, undecryptable, malformed text)."""


class OtpBusy(Exception):
    """Too many unused keys (of this client, or of the server)."""


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    public_key: str
    expires_in: int


class OtpKeys:
    """The one-time key pairs in the index database. Thread- and process-safe.

    With ``secret`` (setting ``otp_key_secret``) a private key is stored as
    ``aesgcm:<base64(nonce | AES-256-GCM(PKCS#8 DER))>``, the key id as associated data and
    the AES key SHA-256 of a label and the secret; without, as PKCS#8 PEM."""

    def __init__(self, engine: Engine, secret: str | None = None) -> None:
        self.engine = engine
        self._aes = (
            AESGCM(hashlib.sha256(b"pacsbox otp_key v1\0" + secret.encode()).digest())
            if secret
            else None
        )

    def _seal(self, key: rsa.RSAPrivateKey, key_id: str) -> str:
        if self._aes is None:
            return key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode("ascii")
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        nonce = secrets.token_bytes(12)
        sealed = nonce + self._aes.encrypt(nonce, der, key_id.encode())
        return SEALED_PREFIX + base64.b64encode(sealed).decode("ascii")

    def _open(self, stored: str, key_id: str) -> rsa.RSAPrivateKey | None:
        try:
            if stored.startswith(SEALED_PREFIX):
                if self._aes is None:
                    return None  # sealed by a node that has the secret; this one has not
                sealed = base64.b64decode(stored[len(SEALED_PREFIX) :])
                der = self._aes.decrypt(sealed[:12], sealed[12:], key_id.encode())
                key = serialization.load_der_private_key(der, password=None)
            else:
                key = serialization.load_pem_private_key(stored.encode("ascii"), password=None)
        except (InvalidTag, ValueError, binascii.Error):
            return None
        return key if isinstance(key, rsa.RSAPrivateKey) else None

    def purge(self) -> int:
        with self.engine.begin() as conn:
            return conn.execute(delete(OTP_KEY).where(OTP_KEY.c.expires_at <= utcnow())).rowcount

    def issue(self, client: str, ttl: int) -> IssuedKey:
        """A new key pair: the private half stored, the public half returned (PEM)."""
        self.purge()
        now = utcnow()
        with self.engine.connect() as conn:
            mine = conn.execute(
                select(func.count()).where(OTP_KEY.c.client == client[:64])
            ).scalar_one()
            total = conn.execute(select(func.count()).select_from(OTP_KEY)).scalar_one()
        if mine >= MAX_KEYS_PER_CLIENT:
            raise OtpBusy(
                f"this address holds {MAX_KEYS_PER_CLIENT} unused one-time keys; use or let "
                "them expire first"
            )
        if total >= MAX_KEYS:
            raise OtpBusy("too many unused one-time keys on the server; try again shortly")
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
        public_pem = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )
        key_id = secrets.token_urlsafe(16)
        with self.engine.begin() as conn:
            conn.execute(
                OTP_KEY.insert().values(
                    key_id=key_id,
                    private_key=self._seal(key, key_id),
                    client=client[:64],
                    created_at=now,
                    expires_at=now + timedelta(seconds=ttl),
                )
            )
        return IssuedKey(key_id, public_pem, ttl)

    def _candidates(self, key_id: str | None, client: str) -> list[Any]:
        """The unexpired key named ``key_id``; without one, up to ``MAX_CANDIDATES`` keys,
        this client's first, newest first (ids picked before any private key is read)."""
        now = utcnow()
        live = OTP_KEY.c.expires_at > now
        with self.engine.connect() as conn:
            if key_id is not None:
                ids = [key_id[:32]]
            else:
                mine = OTP_KEY.c.client == client[:64]
                ids = [
                    r.key_id
                    for cond in (mine, ~mine)
                    for r in conn.execute(
                        select(OTP_KEY.c.key_id)
                        .where(live, cond)
                        .order_by(OTP_KEY.c.created_at.desc())
                        .limit(MAX_CANDIDATES)
                    )
                ][:MAX_CANDIDATES]
            if not ids:
                return []
            rows = conn.execute(
                select(OTP_KEY.c.key_id, OTP_KEY.c.private_key).where(
                    OTP_KEY.c.key_id.in_(ids), live
                )
            ).all()
        order = {k: i for i, k in enumerate(ids)}
        return sorted(rows, key=lambda r: order[r.key_id])

    def _consume(self, key_id: str) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(delete(OTP_KEY).where(OTP_KEY.c.key_id == key_id)).rowcount == 1

    def redeem(
        self, code: str, key_id: str | None, client: str, allow_pkcs1v15: bool
    ) -> tuple[str, str]:
        """Decrypt ``code`` with an unused, unexpired key and use the key up.

        Returns (user name, password); raises :class:`OtpError`."""
        ciphertext = decode_code(code)
        candidates = self._candidates(key_id, client)
        if key_id is not None:
            # naming the key burns it, whatever happens next; of two concurrent logins with
            # one key only the one whose delete took the row goes on
            candidates = [row for row in candidates if self._consume(row.key_id)]
        if not candidates:
            raise OtpError("unknown, used or expired one-time key")
        for row in candidates:
            private = self._open(row.private_key, row.key_id)
            plaintext = _decrypt(private, ciphertext, allow_pkcs1v15) if private else None
            if plaintext is None:
                continue
            if key_id is None and not self._consume(row.key_id):
                raise OtpError("this one-time key was used already")
            return parse_credentials(plaintext)
        raise OtpError("the code does not decrypt with an unused one-time key")


def decode_code(code: str) -> bytes:
    """The ciphertext from its base64 text (standard or URL-safe, padding optional; a ``+``
    that became a space through URL decoding is restored)."""
    text = code.strip().replace(" ", "+").replace("\n", "").replace("\r", "")
    if not text or len(text) > MAX_CODE_CHARS:
        raise OtpError("empty or oversized code")
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise OtpError("the code is not base64") from exc
    if len(raw) != KEY_SIZE // 8:
        raise OtpError(f"the code must be a {KEY_SIZE // 8}-byte RSA ciphertext")
    return raw


def _decrypt(key: rsa.RSAPrivateKey, ciphertext: bytes, allow_pkcs1v15: bool) -> bytes | None:
    schemes: list[Any] = list(_OAEP)
    if allow_pkcs1v15:
        schemes.append(padding.PKCS1v15())
    for scheme in schemes:
        try:
            return key.decrypt(ciphertext, scheme)
        except ValueError:
            continue
    return None


def parse_credentials(plaintext: bytes) -> tuple[str, str]:
    """(user name, password) from ``id=...&password=...`` or ``{"id": ..., "password": ...}``
    (``username``/``user`` and ``pw`` are accepted as names too)."""
    if len(plaintext) > MAX_PLAINTEXT + 64:
        raise OtpError("the decrypted text is too long")
    try:
        text = plaintext.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OtpError("the decrypted text is not UTF-8") from exc
    values: dict[str, Any]
    if text.lstrip().startswith("{"):
        try:
            loaded = json.loads(text)
        except ValueError as exc:
            raise OtpError("the decrypted text is not valid JSON") from exc
        values = loaded if isinstance(loaded, dict) else {}
    else:
        values = dict(parse_qsl(text, keep_blank_values=True))
    user = next((values[k] for k in ("id", "username", "user") if k in values), None)
    password = next((values[k] for k in ("password", "pw") if k in values), None)
    if not isinstance(user, str) or not isinstance(password, str) or not user:
        raise OtpError("the decrypted text must be id=<user>&password=<password>")
    return user[:256], password[:1024]


def _keys(request: Request) -> OtpKeys:
    state = request.app.state
    keys = getattr(state, "otp_keys", None)
    if keys is None:
        ctx = context(request)
        keys = state.otp_keys = OtpKeys(ctx.archive.engine, ctx.settings.otp_key_secret)
    return keys


def _client_key(client: str) -> str:
    """The throttling name under which bad codes of one client address count."""
    return f"otp:{client}"


@router.get("/otp", tags=["auth"], summary="A one-time RSA public key for the OTP login")
async def otp_key(request: Request) -> JSONResponse:
    """No authentication (SPEC E6). A fresh RSA 2048 public key (PEM, SubjectPublicKeyInfo)
    valid once for ``expires_in`` seconds; 429 while this address is backed off or holds too
    many unused keys."""
    ctx = context(request)
    client = client_address(request)
    wait = await run_in_threadpool(ctx.throttle.retry_after, _client_key(client), client)
    if wait:
        raise throttled(wait)
    try:
        issued = await run_in_threadpool(_keys(request).issue, client, ctx.settings.otp_ttl_seconds)
    except OtpBusy as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": "10"}) from exc
    return JSONResponse(
        {
            "key_id": issued.key_id,
            "public_key": issued.public_key,
            "algorithm": ALGORITHM,
            "expires_in": issued.expires_in,
            "key_size": KEY_SIZE,
            "plaintext": "id=<user>&password=<password>",
        },
        headers={"Cache-Control": "no-store"},
    )


class OtpLoginBody(BaseModel):
    code: str = Field(max_length=MAX_CODE_CHARS)
    key_id: str | None = Field(None, max_length=64)


async def _body(request: Request) -> OtpLoginBody:
    """The JSON or ``application/x-www-form-urlencoded`` body, read up to ``MAX_BODY`` bytes
    (also when it comes chunked, without a Content-Length)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise HTTPException(400, "the request body is too large for a login code")
    try:
        if ctype == "application/json":
            values = json.loads(raw)
        elif ctype in ("application/x-www-form-urlencoded", ""):
            form = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
            values = {"code": form.get("code", ""), "key_id": form.get("key_id") or None}
        else:
            raise ValueError(ctype)
        return OtpLoginBody.model_validate(values)
    except Exception as exc:
        raise HTTPException(
            400,
            f"send code (base64, at most {MAX_CODE_CHARS} characters) and optionally key_id "
            "as JSON or application/x-www-form-urlencoded",
        ) from exc


@router.post("/otp/login", tags=["auth"], summary="Log in with an RSA-encrypted one-time code")
async def otp_login(request: Request) -> JSONResponse:
    """No authentication (SPEC E6). ``{"code": base64(RSA-OAEP-SHA256("id=..&password=..")),
    "key_id": optional}`` as JSON or a form. 200 as ``POST /api/login`` (session cookie,
    ``csrf_token``); 401 for an unknown/used/expired key, an undecryptable code or wrong
    credentials; 429 while backed off."""
    from pacsbox.web.api import _user_json

    ctx = context(request)
    client = client_address(request)
    body = await _body(request)
    wait = await run_in_threadpool(ctx.throttle.retry_after, _client_key(client), client)
    if wait:
        raise throttled(wait)
    try:
        username, password = await run_in_threadpool(
            _keys(request).redeem,
            body.code,
            body.key_id,
            client,
            ctx.settings.otp_allow_pkcs1v15,
        )
    except OtpError as exc:
        backoff = await run_in_threadpool(ctx.throttle.failed, _client_key(client), client)
        ctx.audit.record(
            "login-failed",
            client=client,
            outcome="failure",
            detail=f"one-time password login: {exc}",
        )
        if backoff:
            raise throttled(backoff) from exc
        raise HTTPException(401, f"one-time login refused: {exc}") from exc
    # wrong credentials: 401/429 and a login-failed event, as POST /api/login
    user = await run_in_threadpool(check_password_login, ctx, username, password, client)
    request.state.user = user.username
    max_age = ctx.settings.session_max_age
    sid, csrf = await run_in_threadpool(ctx.users.create_session, user, client, max_age)
    ctx.audit.record(
        "login", user=user.username, client=client, detail="session (one-time password)"
    )
    response = JSONResponse({"user": _user_json(user), "csrf_token": csrf})
    secure = request.url.scheme == "https"
    response.set_cookie(
        SESSION_COOKIE, sid, max_age=max_age, httponly=True, secure=secure, samesite="strict"
    )
    response.set_cookie(
        CSRF_COOKIE, csrf, max_age=max_age, httponly=False, secure=secure, samesite="strict"
    )
    response.headers["Cache-Control"] = "no-store"
    return response
