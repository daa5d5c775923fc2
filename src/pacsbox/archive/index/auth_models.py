"""Tables for HTTP access control and the audit log (SPEC E3, R3), on the index's ``Base``.

- ``app_user``: accounts with an argon2id password hash (never the password), a role, a
  disabled flag and a "must change password" flag (the generated default ``admin``).
- ``app_role``: role name → comma-separated privileges; the built-in roles are seeded by the
  migration and cannot be removed, custom roles can be added.
- ``user_session``: login sessions. Only the SHA-256 of the session id is stored, so a copy of
  the database does not let anyone take over a session. ``csrf_token`` is the per-session
  anti-CSRF secret the client must echo in ``X-CSRF-Token``.
- ``api_token``: API tokens, stored as SHA-256 (they are 256-bit random values, shown once).
- ``login_throttle``: failed-login counters per user name and per client address, shared by
  every HTTP process and node (back-off with ``locked_until``).
- ``audit_event``: who did what to which object, from where, when, with which outcome.

Created by migration 0003; never ``create_all``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from pacsbox.archive.index.models import UID, Base


class AppRole(Base):
    __tablename__ = "app_role"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    privileges: Mapped[str] = mapped_column(String(255), default="")
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(String(255), default="")


class AppUser(Base):
    __tablename__ = "app_user"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(ForeignKey("app_role.name"), index=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    full_name: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class UserSession(Base):
    __tablename__ = "user_session"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_fk: Mapped[int] = mapped_column(ForeignKey("app_user.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    client: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class ApiToken(Base):
    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_fk: Mapped[int] = mapped_column(ForeignKey("app_user.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: the first characters of the token, to recognise it in lists (not enough to use it)
    prefix: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class LoginThrottle(Base):
    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(DateTime)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class AuditEvent(Base):
    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    username: Mapped[str] = mapped_column(String(64), default="", index=True)
    client: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(16), index=True)
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    study_uid: Mapped[str] = mapped_column(UID, default="", index=True)
    series_uid: Mapped[str] = mapped_column(UID, default="")
    sop_uid: Mapped[str] = mapped_column(UID, default="")
    #: another object than an instance: an AE title, a user name, a setting
    object: Mapped[str] = mapped_column(String(255), default="")
    detail: Mapped[str] = mapped_column(String(1024), default="")


Index("ix_audit_event_action_at", AuditEvent.action, AuditEvent.at)
