"""Users, roles and privileges; login sessions, API tokens and failed-login throttling
(SPEC E3, R3).

Everything is kept in the index database, so any number of HTTP processes or nodes can serve
the same users: a session created by one process is valid in every other one, and a back-off
imposed after failed logins holds whichever process the next attempt reaches.

- Passwords are stored as argon2id hashes (RFC 9106) with OWASP's baseline parameters
  (19 MiB, 2 passes, 1 lane: ~0.1 s on one core, so a login storm cannot starve a small
  server), never in clear, and never logged. Hashes made with other parameters are
  re-hashed at the next successful login.
- Session ids and API tokens are 256-bit random values; only their SHA-256 is stored (a
  high-entropy secret needs no slow hash), so a copy of the database lets nobody log in.
- Privileges: ``view, upload, modify, forward, print, export, delete, share, admin``; roles map
  to sets of them. The built-in roles (seeded by migration 0003) cannot be removed; custom
  roles can be added.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Engine, Table, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from pacsbox.archive.index.auth_models import (
    ApiToken,
    AppRole,
    AppUser,
    LoginThrottle,
    UserSession,
)
from pacsbox.archive.index.writer import utcnow

USER: Table = AppUser.__table__  # type: ignore[assignment]
ROLE: Table = AppRole.__table__  # type: ignore[assignment]
SESSION: Table = UserSession.__table__  # type: ignore[assignment]
TOKEN: Table = ApiToken.__table__  # type: ignore[assignment]
THROTTLE: Table = LoginThrottle.__table__  # type: ignore[assignment]

#: The privileges of SPEC E3, in display order.
PRIVILEGES: tuple[str, ...] = (
    "view",
    "upload",
    "modify",
    "forward",
    "print",
    "export",
    "delete",
    "share",
    "admin",
)
#: The built-in roles (also seeded by migration 0003).
BUILTIN_ROLES: dict[str, tuple[str, ...]] = {
    "admin": PRIVILEGES,
    "radiologist": ("view", "upload", "modify", "forward", "print", "export", "share"),
    "technician": ("view", "upload", "modify", "forward", "print"),
    "viewer": ("view",),
}
DEFAULT_ADMIN = "admin"
MIN_PASSWORD_LENGTH = 8
TOKEN_PREFIX = "pbx_"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class UserError(ValueError):
    """A user/role/token operation was refused; the message says why."""


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str
    enabled: bool
    must_change_password: bool
    full_name: str
    created_at: datetime
    last_login_at: datetime | None
    privileges: frozenset[str]

    def has(self, privilege: str) -> bool:
        return privilege in self.privileges

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["privileges"] = [p for p in PRIVILEGES if p in self.privileges]
        return out


@dataclass(frozen=True)
class Role:
    name: str
    privileges: tuple[str, ...]
    builtin: bool
    description: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "privileges": list(self.privileges)}


@dataclass(frozen=True)
class TokenInfo:
    """An API token as listed (never the secret)."""

    id: int
    username: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        now = utcnow()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "active": self.active}


@dataclass(frozen=True)
class SessionInfo:
    """A resolved login session."""

    user: User
    id_hash: str
    csrf_token: str
    expires_at: datetime


def sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_privileges(value: str | Iterable[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    wanted = {p.strip().lower() for p in items if p and p.strip()}
    unknown = wanted - set(PRIVILEGES)
    if unknown:
        raise UserError(
            f"unknown privilege(s) {', '.join(sorted(unknown))}; known: {', '.join(PRIVILEGES)}"
        )
    return tuple(p for p in PRIVILEGES if p in wanted)


def check_name(name: str, what: str = "user name") -> str:
    name = (name or "").strip()
    if not _NAME_RE.match(name):
        raise UserError(
            f"{what} {name!r} must be 1-64 characters: letters, digits, '.', '_', '@', '-' "
            "(starting with a letter or digit)"
        )
    return name


def check_password(password: str, username: str = "") -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > 1024:
        raise UserError("a password may have at most 1024 characters")
    if username and password.lower() == username.lower():
        raise UserError("the password must differ from the user name")
    return password


def generate_password() -> str:
    """A random password for generated accounts (~96 bits)."""
    return secrets.token_urlsafe(12)


class UserDirectory:
    """Users, roles, sessions and API tokens in the index database. Thread-safe."""

    def __init__(self, engine: Engine, hasher: PasswordHasher | None = None) -> None:
        self.engine = engine
        self.hasher = hasher or PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
        #: verified against when the user does not exist, so the answer time does not tell
        #: whether a user name exists
        self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))

    # -- roles -----------------------------------------------------------------------------
    def roles(self) -> list[Role]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(ROLE).order_by(ROLE.c.name)).all()
        return [
            Role(r.name, parse_privileges(r.privileges), r.builtin, r.description) for r in rows
        ]

    def role(self, name: str) -> Role | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(ROLE).where(ROLE.c.name == name)).first()
        return Role(r.name, parse_privileges(r.privileges), r.builtin, r.description) if r else None

    def add_role(self, name: str, privileges: str | Iterable[str], description: str = "") -> Role:
        name = check_name(name, "role name").lower()
        privs = parse_privileges(privileges)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(ROLE).values(
                        name=name,
                        privileges=",".join(privs),
                        builtin=False,
                        description=description[:255],
                    )
                )
        except IntegrityError as exc:
            raise UserError(f"role {name!r} exists already") from exc
        return Role(name, privs, False, description[:255])

    def remove_role(self, name: str) -> None:
        role = self.role(name)
        if role is None:
            raise UserError(f"no role {name!r}")
        if role.builtin:
            raise UserError(f"role {name!r} is built in and cannot be removed")
        with self.engine.begin() as conn:
            used = conn.execute(
                select(func.count()).select_from(USER).where(USER.c.role == name)
            ).scalar_one()
            if used:
                raise UserError(f"role {name!r} is still given to {used} user(s)")
            conn.execute(delete(ROLE).where(ROLE.c.name == name))

    # -- users -----------------------------------------------------------------------------
    def _user_query(self) -> Any:
        return select(
            USER.c.id,
            USER.c.username,
            USER.c.role,
            USER.c.enabled,
            USER.c.must_change_password,
            USER.c.full_name,
            USER.c.created_at,
            USER.c.last_login_at,
            ROLE.c.privileges,
        ).join(ROLE, ROLE.c.name == USER.c.role)

    @staticmethod
    def _user(row: Any) -> User:
        return User(
            id=row.id,
            username=row.username,
            role=row.role,
            enabled=bool(row.enabled),
            must_change_password=bool(row.must_change_password),
            full_name=row.full_name,
            created_at=row.created_at,
            last_login_at=row.last_login_at,
            privileges=frozenset(parse_privileges(row.privileges)),
        )

    def list(self) -> list[User]:
        with self.engine.connect() as conn:
            rows = conn.execute(self._user_query().order_by(USER.c.username)).all()
        return [self._user(r) for r in rows]

    def get(self, username: str) -> User | None:
        with self.engine.connect() as conn:
            row = conn.execute(self._user_query().where(USER.c.username == username)).first()
        return self._user(row) if row else None

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(USER)).scalar_one())

    def _require(self, username: str) -> User:
        user = self.get(username)
        if user is None:
            raise UserError(f"no user {username!r}")
        return user

    def add(
        self,
        username: str,
        role: str,
        password: str,
        *,
        full_name: str = "",
        must_change_password: bool = False,
        enabled: bool = True,
    ) -> User:
        username = check_name(username)
        check_password(password, username)
        if self.role(role) is None:
            raise UserError(f"no role {role!r}; roles: {', '.join(r.name for r in self.roles())}")
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(USER).values(
                        username=username,
                        password_hash=self.hasher.hash(password),
                        role=role,
                        enabled=enabled,
                        must_change_password=must_change_password,
                        full_name=full_name[:128],
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError as exc:
            raise UserError(f"user {username!r} exists already") from exc
        return self._require(username)

    def update(
        self,
        username: str,
        *,
        role: str | None = None,
        enabled: bool | None = None,
        full_name: str | None = None,
    ) -> User:
        user = self._require(username)
        values: dict[str, Any] = {}
        if role is not None:
            if self.role(role) is None:
                raise UserError(f"no role {role!r}")
            values["role"] = role
        if enabled is not None:
            values["enabled"] = enabled
        if full_name is not None:
            values["full_name"] = full_name[:128]
        if not values:
            return user
        values["updated_at"] = utcnow()
        with self.engine.begin() as conn:
            conn.execute(update(USER).where(USER.c.id == user.id).values(**values))
            if enabled is False:  # a disabled account loses its sessions at once
                conn.execute(delete(SESSION).where(SESSION.c.user_fk == user.id))
        return self._require(username)

    def set_password(
        self,
        username: str,
        password: str,
        *,
        must_change: bool = False,
        keep_session: str | None = None,
    ) -> User:
        """Set a new password; every session of the user except ``keep_session`` (an id
        hash) ends."""
        user = self._require(username)
        check_password(password, username)
        with self.engine.begin() as conn:
            conn.execute(
                update(USER)
                .where(USER.c.id == user.id)
                .values(
                    password_hash=self.hasher.hash(password),
                    must_change_password=must_change,
                    updated_at=utcnow(),
                )
            )
            stmt = delete(SESSION).where(SESSION.c.user_fk == user.id)
            if keep_session:
                stmt = stmt.where(SESSION.c.id_hash != keep_session)
            conn.execute(stmt)
        return self._require(username)

    def remove(self, username: str) -> None:
        user = self._require(username)
        with self.engine.begin() as conn:
            conn.execute(delete(SESSION).where(SESSION.c.user_fk == user.id))
            conn.execute(delete(TOKEN).where(TOKEN.c.user_fk == user.id))
            conn.execute(delete(USER).where(USER.c.id == user.id))

    def password_hash(self, username: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(USER.c.password_hash).where(USER.c.username == username)
            ).scalar_one_or_none()

    def verify_password(self, username: str, password: str) -> User | None:
        """The enabled user if ``password`` is right, else None (same work either way)."""
        stored = self.password_hash(username) if username and len(username) <= 64 else None
        try:
            self.hasher.verify(stored or self._dummy_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if stored is None:
            return None
        user = self.get(username)
        if user is None or not user.enabled:
            return None
        if self.hasher.check_needs_rehash(stored):
            with self.engine.begin() as conn:
                conn.execute(
                    update(USER)
                    .where(USER.c.id == user.id)
                    .values(password_hash=self.hasher.hash(password))
                )
        return user

    def ensure_default_admin(self) -> str | None:
        """Create ``admin`` with a random password when there is no user at all.

        Returns the password (to be shown once by the caller, stored nowhere) or None when
        users exist. The account must change its password at first login (SPEC E3).
        """
        if self.count():
            return None
        password = generate_password()
        try:
            self.add(DEFAULT_ADMIN, "admin", password, must_change_password=True)
        except UserError:  # another process created it at the same moment
            return None
        return password

    # -- sessions --------------------------------------------------------------------------
    def create_session(self, user: User, client: str, max_age: int) -> tuple[str, str]:
        """A new login session: returns (session id, CSRF token); only the id's hash is kept."""
        sid = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                insert(SESSION).values(
                    id_hash=sha256(sid),
                    user_fk=user.id,
                    csrf_token=csrf,
                    client=client[:64],
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + timedelta(seconds=max_age),
                )
            )
            conn.execute(update(USER).where(USER.c.id == user.id).values(last_login_at=now))
            # housekeeping: expired sessions of everyone
            conn.execute(delete(SESSION).where(SESSION.c.expires_at < now))
        return sid, csrf

    def resolve_session(self, sid: str, idle_timeout: int) -> SessionInfo | None:
        """The session for a cookie value, if it exists, has not expired and its user is
        enabled. ``last_seen_at`` is refreshed at most once a minute."""
        if not sid or len(sid) > 128:
            return None
        id_hash = sha256(sid)
        now = utcnow()
        with self.engine.connect() as conn:
            row = conn.execute(
                select(
                    SESSION.c.user_fk,
                    SESSION.c.csrf_token,
                    SESSION.c.last_seen_at,
                    SESSION.c.expires_at,
                    USER.c.username,
                )
                .join(USER, USER.c.id == SESSION.c.user_fk)
                .where(SESSION.c.id_hash == id_hash)
            ).first()
        if row is None:
            return None
        if row.expires_at <= now or row.last_seen_at + timedelta(seconds=idle_timeout) <= now:
            self.end_session(sid)
            return None
        user = self.get(row.username)
        if user is None or not user.enabled:
            return None
        if now - row.last_seen_at > timedelta(seconds=60):
            with self.engine.begin() as conn:
                conn.execute(
                    update(SESSION).where(SESSION.c.id_hash == id_hash).values(last_seen_at=now)
                )
        return SessionInfo(user, id_hash, row.csrf_token, row.expires_at)

    def end_session(self, sid: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(SESSION).where(SESSION.c.id_hash == sha256(sid)))

    def session_count(self, username: str) -> int:
        user = self._require(username)
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(SESSION).where(SESSION.c.user_fk == user.id)
                ).scalar_one()
            )

    # -- API tokens ------------------------------------------------------------------------
    def create_token(
        self, username: str, name: str = "", expires_days: int | None = None
    ) -> tuple[TokenInfo, str]:
        """A new API token for ``username``: (its listing, the secret). The secret is shown
        to the caller once and only its SHA-256 is stored."""
        user = self._require(username)
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        expires = now + timedelta(days=expires_days) if expires_days else None
        with self.engine.begin() as conn:
            conn.execute(
                insert(TOKEN).values(
                    user_fk=user.id,
                    name=name[:128],
                    token_hash=sha256(secret),
                    prefix=secret[:10],
                    created_at=now,
                    expires_at=expires,
                )
            )
            token_id = conn.execute(
                select(TOKEN.c.id).where(TOKEN.c.token_hash == sha256(secret))
            ).scalar_one()
        return self.token(token_id), secret  # type: ignore[return-value]

    def _token_query(self) -> Any:
        return select(
            TOKEN.c.id,
            USER.c.username,
            TOKEN.c.name,
            TOKEN.c.prefix,
            TOKEN.c.created_at,
            TOKEN.c.last_used_at,
            TOKEN.c.expires_at,
            TOKEN.c.revoked_at,
        ).join(USER, USER.c.id == TOKEN.c.user_fk)

    def token(self, token_id: int) -> TokenInfo | None:
        with self.engine.connect() as conn:
            row = conn.execute(self._token_query().where(TOKEN.c.id == token_id)).first()
        return TokenInfo(*row) if row else None

    def tokens(self, username: str | None = None) -> list[TokenInfo]:
        stmt = self._token_query().order_by(TOKEN.c.id)
        if username is not None:
            stmt = stmt.where(USER.c.username == username)
        with self.engine.connect() as conn:
            return [TokenInfo(*row) for row in conn.execute(stmt).all()]

    def revoke_token(self, token_id: int, username: str | None = None) -> TokenInfo:
        """Revoke a token (of ``username`` when given: users revoke only their own)."""
        info = self.token(token_id)
        if info is None or (username is not None and info.username != username):
            raise UserError(f"no token {token_id}" + (f" of {username}" if username else ""))
        with self.engine.begin() as conn:
            conn.execute(
                update(TOKEN)
                .where(TOKEN.c.id == token_id, TOKEN.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        return self.token(token_id)  # type: ignore[return-value]

    def resolve_token(self, secret: str) -> User | None:
        """The enabled user owning an active token."""
        if not secret or len(secret) > 128:
            return None
        now = utcnow()
        with self.engine.connect() as conn:
            row = conn.execute(
                select(
                    TOKEN.c.id,
                    TOKEN.c.token_hash,
                    TOKEN.c.expires_at,
                    TOKEN.c.revoked_at,
                    TOKEN.c.last_used_at,
                    USER.c.username,
                )
                .join(USER, USER.c.id == TOKEN.c.user_fk)
                .where(TOKEN.c.token_hash == sha256(secret))
            ).first()
        if row is None or not hmac.compare_digest(row.token_hash, sha256(secret)):
            return None
        if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
            return None
        user = self.get(row.username)
        if user is None or not user.enabled:
            return None
        if row.last_used_at is None or now - row.last_used_at > timedelta(seconds=60):
            with self.engine.begin() as conn:
                conn.execute(update(TOKEN).where(TOKEN.c.id == row.id).values(last_used_at=now))
        return user


class LoginThrottling:
    """Back-off after failed logins, per user name and per client address (in the DB).

    After ``max_failures`` failures for a key, each further failure locks the key for
    2^(n - max_failures) seconds (1, 2, 4, ... up to ``max_lockout``). While a key is locked
    no password is even checked: the answer is 429 with the remaining time. A successful
    login clears the user-name key; counters of keys idle for ``max_lockout`` start again.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_failures: int = 5,
        max_failures_ip: int = 20,
        max_lockout: int = 900,
    ) -> None:
        self.engine = engine
        self.max_failures = max_failures
        self.max_failures_ip = max_failures_ip
        self.max_lockout = max_lockout

    @staticmethod
    def keys(username: str, client: str) -> list[str]:
        return [f"user:{(username or '').lower()[:100]}", f"ip:{client[:64]}"]

    def retry_after(self, username: str, client: str) -> int:
        """Seconds until a login may be tried again (0 = now)."""
        now = utcnow()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(THROTTLE.c.locked_until).where(
                    THROTTLE.c.key.in_(self.keys(username, client))
                )
            ).all()
        waits = [(r.locked_until - now).total_seconds() for r in rows if r.locked_until]
        wait = max(waits, default=0.0)
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, username: str, client: str) -> int:
        """Record a failure; returns the resulting back-off in seconds (0 = none yet)."""
        now = utcnow()
        longest = 0
        for key, limit in zip(
            self.keys(username, client), (self.max_failures, self.max_failures_ip), strict=True
        ):
            failures = self._bump(key, now)
            if failures >= limit:
                wait = min(self.max_lockout, 2 ** min(failures - limit, 30))
                until = now + timedelta(seconds=wait)
                if until.microsecond:  # MariaDB's DATETIME keeps whole seconds: never round
                    until = until.replace(microsecond=0) + timedelta(seconds=1)  # a lock down
                with self.engine.begin() as conn:
                    conn.execute(
                        update(THROTTLE).where(THROTTLE.c.key == key).values(locked_until=until)
                    )
                longest = max(longest, wait)
        return longest

    def _bump(self, key: str, now: datetime) -> int:
        stale = now - timedelta(seconds=self.max_lockout)
        for _ in range(3):
            with self.engine.begin() as conn:
                # a key idle for max_lockout starts counting again
                conn.execute(
                    update(THROTTLE)
                    .where(THROTTLE.c.key == key, THROTTLE.c.last_failure_at < stale)
                    .values(failures=0, locked_until=None)
                )
                n = conn.execute(
                    update(THROTTLE)
                    .where(THROTTLE.c.key == key)
                    .values(failures=THROTTLE.c.failures + 1, last_failure_at=now)
                ).rowcount
                if n:
                    return int(
                        conn.execute(
                            select(THROTTLE.c.failures).where(THROTTLE.c.key == key)
                        ).scalar_one()
                    )
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(THROTTLE).values(key=key, failures=1, last_failure_at=now))
                return 1
            except IntegrityError:  # created concurrently: update it
                continue
        return 1

    def succeeded(self, username: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(THROTTLE).where(THROTTLE.c.key == self.keys(username, "")[0]))
