"""archive.users: accounts, argon2id hashes, roles, sessions, API tokens, login throttling;
archive.audit: events and queries (SPEC E3, R3)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from pacsbox.archive.audit import AUDIT, AuditLog
from pacsbox.archive.index.writer import utcnow
from pacsbox.archive.users import (
    BUILTIN_ROLES,
    PRIVILEGES,
    SESSION,
    THROTTLE,
    TOKEN,
    USER,
    LoginThrottling,
    UserDirectory,
    UserError,
    sha256,
)


@pytest.fixture
def users(sqlite_archive) -> UserDirectory:  # noqa: ANN001
    return UserDirectory(sqlite_archive.engine)


def test_builtin_roles_seeded_by_migration(users: UserDirectory) -> None:
    roles = {r.name: r for r in users.roles()}
    assert set(BUILTIN_ROLES) <= set(roles)
    for name, privileges in BUILTIN_ROLES.items():
        assert roles[name].privileges == privileges
        assert roles[name].builtin
    assert roles["admin"].privileges == PRIVILEGES
    assert roles["viewer"].privileges == ("view",)
    with pytest.raises(UserError, match="built in"):
        users.remove_role("viewer")


def test_password_stored_as_argon2id_and_verified(users: UserDirectory) -> None:
    user = users.add("alice", "radiologist", "correct horse")
    assert user.has("export") and not user.has("delete")
    stored = users.password_hash("alice")
    assert stored is not None and stored.startswith("$argon2id$")
    assert "correct horse" not in stored
    assert users.verify_password("alice", "correct horse") == users.get("alice")
    assert users.verify_password("alice", "wrong horse") is None
    assert users.verify_password("nobody", "correct horse") is None
    users.update("alice", enabled=False)
    assert users.verify_password("alice", "correct horse") is None


def test_names_passwords_and_duplicates_checked(users: UserDirectory) -> None:
    with pytest.raises(UserError, match="at least 8"):
        users.add("bob", "viewer", "short")
    with pytest.raises(UserError, match="differ from the user name"):
        users.add("bobbybobby", "viewer", "BobbyBobby")
    with pytest.raises(UserError, match="must be 1-64"):
        users.add("../etc", "viewer", "long enough 1")
    with pytest.raises(UserError, match="no role"):
        users.add("bob", "wizard", "long enough 1")
    users.add("bob", "viewer", "long enough 1")
    with pytest.raises(UserError, match="exists already"):
        users.add("bob", "viewer", "long enough 2")


def test_custom_role(users: UserDirectory) -> None:
    role = users.add_role("Reviewer", ["view", "export", "print"])
    assert role.name == "reviewer"
    assert set(role.privileges) == {"view", "export", "print"}
    with pytest.raises(UserError, match="unknown privilege"):
        users.add_role("bad", ["view", "fly"])
    user = users.add("carol", "reviewer", "long enough 1")
    assert user.privileges == frozenset({"view", "export", "print"})
    with pytest.raises(UserError, match="still given"):
        users.remove_role("reviewer")
    users.update("carol", role="viewer")
    users.remove_role("reviewer")
    assert users.role("reviewer") is None


def test_default_admin_created_once_and_must_change(users: UserDirectory) -> None:
    password = users.ensure_default_admin()
    assert password and len(password) >= 12
    admin = users.get("admin")
    assert admin is not None and admin.must_change_password and admin.has("admin")
    assert users.verify_password("admin", password) is not None
    assert users.ensure_default_admin() is None  # never again, never another password
    users.set_password("admin", "a new secret")
    assert not users.get("admin").must_change_password  # type: ignore[union-attr]


def test_sessions_hashed_expire_and_end_on_password_change(users: UserDirectory) -> None:
    user = users.add("dave", "viewer", "long enough 1")
    sid, csrf = users.create_session(user, "10.0.0.1", max_age=3600)
    with users.engine.connect() as conn:
        stored = conn.execute(select(SESSION.c.id_hash, SESSION.c.csrf_token)).all()
    assert stored == [(sha256(sid), csrf)]  # the id itself is nowhere
    info = users.resolve_session(sid, idle_timeout=600)
    assert info is not None and info.user.username == "dave" and info.csrf_token == csrf
    assert users.resolve_session(sid + "x", idle_timeout=600) is None
    # idle time-out
    with users.engine.begin() as conn:
        conn.execute(update(SESSION).values(last_seen_at=utcnow() - timedelta(hours=2)))
    assert users.resolve_session(sid, idle_timeout=600) is None
    # a password change ends the other sessions
    sid1, _ = users.create_session(user, "", 3600)
    sid2, _ = users.create_session(user, "", 3600)
    users.set_password("dave", "long enough 2", keep_session=sha256(sid1))
    assert users.resolve_session(sid1, 600) is not None
    assert users.resolve_session(sid2, 600) is None
    users.update("dave", enabled=False)
    assert users.resolve_session(sid1, 600) is None


def test_tokens_shown_once_stored_hashed_revocable(users: UserDirectory) -> None:
    users.add("erin", "technician", "long enough 1")
    info, secret = users.create_token("erin", "scanner script")
    assert secret.startswith("pbx_") and len(secret) > 40
    with users.engine.connect() as conn:
        rows = conn.execute(select(TOKEN)).mappings().all()
    assert len(rows) == 1
    assert rows[0]["token_hash"] == sha256(secret)
    assert all(secret not in str(v) for v in rows[0].values())
    assert secret not in repr(users.tokens("erin"))
    assert users.resolve_token(secret).username == "erin"  # type: ignore[union-attr]
    assert users.resolve_token(secret[:-1]) is None
    with pytest.raises(UserError):
        users.revoke_token(info.id, "someone-else")
    users.revoke_token(info.id, "erin")
    assert users.resolve_token(secret) is None
    assert not users.tokens("erin")[0].active
    # expired tokens are refused
    _, secret2 = users.create_token("erin", "short", expires_days=1)
    with users.engine.begin() as conn:
        conn.execute(
            update(TOKEN)
            .where(TOKEN.c.token_hash == sha256(secret2))
            .values(expires_at=utcnow() - timedelta(days=1))
        )
    assert users.resolve_token(secret2) is None


def test_throttling_backs_off_per_user_and_per_address(sqlite_archive) -> None:  # noqa: ANN001
    t = LoginThrottling(sqlite_archive.engine, max_failures=3, max_failures_ip=5, max_lockout=60)
    assert t.retry_after("frank", "1.1.1.1") == 0
    assert t.failed("frank", "1.1.1.1") == 0
    assert t.failed("frank", "1.1.1.1") == 0
    assert t.failed("frank", "1.1.1.1") == 1  # third failure: 1 s
    assert t.retry_after("frank", "9.9.9.9") >= 1  # the user name is locked from anywhere
    assert t.failed("frank", "1.1.1.1") == 2  # then 2 s, 4 s, ...
    t.succeeded("frank")
    assert t.retry_after("frank", "2.2.2.2") == 0
    # the address: other user names from it
    assert t.failed("g1", "1.1.1.1") >= 1  # 5th failure from 1.1.1.1
    assert t.retry_after("anyone", "1.1.1.1") >= 1
    assert t.retry_after("anyone", "3.3.3.3") == 0
    # counters are case-insensitive on the user name
    with sqlite_archive.engine.connect() as conn:
        keys = set(conn.execute(select(THROTTLE.c.key)).scalars())
    assert "ip:1.1.1.1" in keys


def test_audit_record_and_query(sqlite_archive) -> None:  # noqa: ANN001
    audit = AuditLog(sqlite_archive.engine)
    audit.record("login", user="alice", client="10.0.0.1")
    audit.record("delete", user="alice", study_uid="1.2.3", detail="study deleted")
    audit.record("login-failed", user="mallory", outcome="failure")
    total, rows = audit.query()
    assert total == 3 and [r.action for r in rows] == ["login-failed", "delete", "login"]
    total, rows = audit.query(user="alice", action="delete")
    assert total == 1 and rows[0].study_uid == "1.2.3"
    total, rows = audit.query(limit=1, offset=1)
    assert total == 3 and len(rows) == 1 and rows[0].action == "delete"
    with pytest.raises(ValueError):
        audit.record("fly")
    with sqlite_archive.engine.connect() as conn:
        assert len(conn.execute(select(AUDIT)).all()) == 3


def test_user_removal_takes_sessions_and_tokens(users: UserDirectory) -> None:
    user = users.add("gina", "viewer", "long enough 1")
    users.create_session(user, "", 3600)
    users.create_token("gina")
    users.remove("gina")
    with users.engine.connect() as conn:
        assert conn.execute(select(SESSION)).all() == []
        assert conn.execute(select(TOKEN)).all() == []
        assert conn.execute(select(USER).where(USER.c.username == "gina")).all() == []
