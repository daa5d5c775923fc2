"""HIS/RIS one-time-password login (SPEC E6, pacsbox.web.otp) against create_app(archive):
key issue, login, single use, expiry, wrong password, hostile codes, throttling, audit."""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from pacsbox.archive.audit import AUDIT
from pacsbox.archive.index.writer import utcnow
from pacsbox.archive.users import THROTTLE, UserDirectory
from pacsbox.web.app import create_app
from pacsbox.web.auth import CSRF_COOKIE, SESSION_COOKIE
from pacsbox.web.otp import MAX_KEYS_PER_CLIENT, OTP_KEY, OtpError, OtpKeys

PASSWORD = "his-pass-123"


def encrypt(public_pem: str, text: str, scheme: str = "oaep") -> str:
    key = serialization.load_pem_public_key(public_pem.encode())
    if scheme == "oaep":
        pad = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    elif scheme == "oaep-mgf1-sha1":  # Java's OAEPWithSHA-256AndMGF1Padding default
        pad = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA256(), label=None)
    else:
        pad = padding.PKCS1v15()
    return base64.b64encode(key.encrypt(text.encode(), pad)).decode()  # type: ignore[union-attr]


def fetch_key(c: TestClient) -> dict:
    r = c.get("/api/otp")
    assert r.status_code == 200, r.text
    return r.json()


def _client(archive, **overrides) -> TestClient:  # noqa: ANN001
    users = UserDirectory(archive.engine)
    users.add("his", "radiologist", PASSWORD)
    users.add("val", "viewer", "viewer-pass-1")
    return TestClient(create_app(archive, archive.settings.model_copy(update=overrides)))


@pytest.fixture
def client(archive) -> Iterator[TestClient]:  # noqa: ANN001 - all three databases
    with _client(archive) as c:
        yield c


@pytest.fixture
def sqlite_client(sqlite_archive) -> Iterator[TestClient]:  # noqa: ANN001
    with _client(sqlite_archive) as c:
        yield c


def audit_rows(archive, action: str) -> list:  # noqa: ANN001
    with archive.engine.connect() as conn:
        return conn.execute(select(AUDIT).where(AUDIT.c.action == action)).all()


def test_login_reuse_expiry_wrong_password_on_every_db(client: TestClient, archive) -> None:  # noqa: ANN001
    key = fetch_key(client)
    assert key["algorithm"] == "RSA-OAEP-SHA256" and key["expires_in"] == 60
    assert key["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    public = serialization.load_pem_public_key(key["public_key"].encode())
    assert public.key_size == 2048  # type: ignore[union-attr]
    code = encrypt(key["public_key"], f"id=his&password={PASSWORD}")

    # happy path: the same answer as POST /api/login, and a working session
    r = client.post("/api/otp/login", json={"code": code})
    assert r.status_code == 200, r.text
    assert r.json()["user"]["username"] == "his" and r.json()["csrf_token"]
    assert r.cookies.get(SESSION_COOKIE) and r.cookies.get(CSRF_COOKIE)
    me = client.get("/api/me")
    assert me.status_code == 200 and me.json()["user"]["username"] == "his"
    assert me.json()["auth"] == "session"
    client.cookies.clear()

    # single use: the same code again is refused, and the key row is gone
    r = client.post("/api/otp/login", json={"code": code})
    assert r.status_code == 401 and r.json()["error"]["status"] == 401
    with archive.engine.connect() as conn:
        assert conn.execute(select(OTP_KEY.c.key_id)).all() == []

    # expired: a key past its time is refused (and then purged)
    key = fetch_key(client)
    with archive.engine.begin() as conn:
        conn.execute(
            update(OTP_KEY)
            .where(OTP_KEY.c.key_id == key["key_id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    code = encrypt(key["public_key"], f"id=his&password={PASSWORD}")
    r = client.post("/api/otp/login", json={"code": code, "key_id": key["key_id"]})
    assert r.status_code == 401
    assert client.get("/api/me").status_code == 401

    # wrong password: 401, and the key is used up all the same
    key = fetch_key(client)
    code = encrypt(key["public_key"], "id=his&password=not-the-password")
    r = client.post("/api/otp/login", data={"code": code, "key_id": key["key_id"]})
    assert r.status_code == 401 and "wrong user name or password" in r.text
    code = encrypt(key["public_key"], f"id=his&password={PASSWORD}")
    assert client.post("/api/otp/login", data={"code": code}).status_code == 401

    logins = audit_rows(archive, "login")
    assert [(e.username, e.detail) for e in logins] == [("his", "session (one-time password)")]
    failed = audit_rows(archive, "login-failed")
    assert len(failed) >= 3
    assert any(e.username == "his" for e in failed)  # the wrong password
    assert any("one-time" in e.detail and e.username == "" for e in failed)


def test_form_post_urlsafe_code_json_plaintext_and_mgf1_sha1(sqlite_client: TestClient) -> None:
    c = sqlite_client
    key = fetch_key(c)
    code = encrypt(key["public_key"], '{"id": "his", "password": "' + PASSWORD + '"}')
    urlsafe = code.replace("+", "-").replace("/", "_").rstrip("=")
    r = c.post("/api/otp/login", data={"code": urlsafe})
    assert r.status_code == 200, r.text
    # a '+' that became a space (the code pasted into a URL unencoded) still works
    key = fetch_key(c)
    code = encrypt(key["public_key"], f"id=his&password={PASSWORD}", "oaep-mgf1-sha1")
    r = c.post("/api/otp/login", json={"code": code.replace("+", " ")})
    assert r.status_code == 200, r.text
    # percent-encoded values
    c.cookies.clear()
    key = fetch_key(c)
    code = encrypt(key["public_key"], "id=his&password=his%2Dpass%2D123")
    assert c.post("/api/otp/login", json={"code": code}).status_code == 200


def test_pkcs1v15_only_when_the_setting_allows(sqlite_archive) -> None:  # noqa: ANN001
    with _client(sqlite_archive) as c:
        key = fetch_key(c)
        code = encrypt(key["public_key"], f"id=his&password={PASSWORD}", "pkcs1v15")
        r = c.post("/api/otp/login", json={"code": code, "key_id": key["key_id"]})
        assert r.status_code == 401
    with TestClient(
        create_app(
            sqlite_archive, sqlite_archive.settings.model_copy(update={"otp_allow_pkcs1v15": True})
        )
    ) as c:
        key = fetch_key(c)
        code = encrypt(key["public_key"], f"id=his&password={PASSWORD}", "pkcs1v15")
        r = c.post("/api/otp/login", json={"code": code, "key_id": key["key_id"]})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "body",
    [
        {"code": "!!!! not base64 ####"},
        {"code": base64.b64encode(b"x" * 256).decode()},  # right size, not a ciphertext
        {"code": base64.b64encode(b"short").decode()},
        {"code": ""},
        {"code": "A" * 2000},
        {"code": base64.b64encode(b"x" * 256).decode(), "key_id": "no-such-key"},
        {"code": base64.b64encode(b"x" * 256).decode(), "key_id": "' OR 1=1 --"},
    ],
)
def test_garbage_codes_are_401_and_lose_no_key(sqlite_client: TestClient, body: dict) -> None:
    key = fetch_key(sqlite_client)
    r = sqlite_client.post("/api/otp/login", json=body)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["message"].startswith("one-time login refused")
    # the unrelated key still works afterwards
    code = encrypt(key["public_key"], f"id=his&password={PASSWORD}")
    assert sqlite_client.post("/api/otp/login", json={"code": code}).status_code == 200


@pytest.mark.parametrize(
    ("content", "ctype"),
    [
        (b'{"code": "' + b"A" * 5000 + b'"}', "application/json"),  # oversized
        (b"{not json", "application/json"),
        (b'{"code": 12}', "application/json"),
        (b'["code"]', "application/json"),
        (b"x" * 10000, "text/plain"),
    ],
)
def test_malformed_requests_are_400(sqlite_client: TestClient, content: bytes, ctype: str) -> None:
    r = sqlite_client.post("/api/otp/login", content=content, headers={"Content-Type": ctype})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["status"] == 400


def test_chunked_oversized_and_multipart_bodies_are_400(sqlite_client: TestClient) -> None:
    def chunks():  # noqa: ANN202 - no Content-Length: the server must stop reading itself
        for _ in range(100):
            yield b"A" * 1000

    r = sqlite_client.post(
        "/api/otp/login", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and "too large" in r.text
    r = sqlite_client.post("/api/otp/login", files={"code": ("c", b"xyz")})
    assert r.status_code == 400


def test_decrypted_garbage_is_401(sqlite_client: TestClient) -> None:
    for text in ("no credentials here", "id=&password=x", "password=only", "[1, 2]"):
        key = fetch_key(sqlite_client)
        code = encrypt(key["public_key"], text)
        r = sqlite_client.post("/api/otp/login", json={"code": code, "key_id": key["key_id"]})
        assert r.status_code == 401, (text, r.text)


def test_bad_codes_throttle_the_address(sqlite_archive) -> None:  # noqa: ANN001
    with _client(sqlite_archive, login_max_failures=3, login_max_lockout=60) as c:
        garbage = {"code": base64.b64encode(b"y" * 256).decode()}
        codes = [c.post("/api/otp/login", json=garbage).status_code for _ in range(3)]
        assert codes == [401, 401, 429], codes
        with sqlite_archive.engine.connect() as conn:
            locks = dict(conn.execute(select(THROTTLE.c.key, THROTTLE.c.locked_until)).all())
        assert locks["user:otp:testclient"] is not None  # the address's OTP key is locked
        assert locks["ip:testclient"] is None  # below login_max_failures_ip
        # hold the lock (a slow machine must not see the 1 s lock run out mid-test)
        with sqlite_archive.engine.begin() as conn:
            conn.execute(
                update(THROTTLE)
                .where(THROTTLE.c.key == "user:otp:testclient")
                .values(locked_until=utcnow() + timedelta(seconds=60))
            )
        r = c.post("/api/otp/login", json=garbage)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 30
        # while backed off no key is handed out either, and a good code is not even tried
        assert c.get("/api/otp").status_code == 429
        # password logins of users are not blocked by bad codes
        r = c.post("/api/login", json={"username": "his", "password": PASSWORD})
        assert r.status_code == 200


def test_unused_keys_per_address_are_limited(sqlite_client: TestClient) -> None:
    for _ in range(MAX_KEYS_PER_CLIENT):
        fetch_key(sqlite_client)
    r = sqlite_client.get("/api/otp")
    assert r.status_code == 429 and "unused one-time keys" in r.json()["error"]["message"]


def test_code_and_password_never_logged(
    sqlite_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = fetch_key(sqlite_client)
    code = encrypt(key["public_key"], f"id=his&password={PASSWORD}")
    assert sqlite_client.post("/api/otp/login", json={"code": code}).status_code == 200
    server = "\n".join(
        r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))
    )
    assert code not in server and PASSWORD not in server
    assert "PRIVATE KEY" not in server
    assert "POST /api/otp/login 200 user=his" in server


def test_private_keys_sealed_with_the_secret(sqlite_archive) -> None:  # noqa: ANN001
    """With otp_key_secret the database holds no usable private key; a node with the same
    secret redeems the code, one without it (or with another) cannot."""
    with _client(sqlite_archive, otp_key_secret="node-secret-1") as c:
        key = fetch_key(c)
        with sqlite_archive.engine.connect() as conn:
            stored = conn.execute(select(OTP_KEY.c.private_key)).scalar_one()
        assert stored.startswith("aesgcm:") and "PRIVATE KEY" not in stored
        code = encrypt(key["public_key"], f"id=his&password={PASSWORD}")
    app = create_app(sqlite_archive, sqlite_archive.settings.model_copy())
    with TestClient(app) as other:  # no secret: cannot open the sealed key
        assert other.post("/api/otp/login", json={"code": code}).status_code == 401
    settings = sqlite_archive.settings.model_copy(update={"otp_key_secret": "another"})
    with TestClient(create_app(sqlite_archive, settings)) as other:
        assert other.post("/api/otp/login", json={"code": code}).status_code == 401
    settings = sqlite_archive.settings.model_copy(update={"otp_key_secret": "node-secret-1"})
    with TestClient(create_app(sqlite_archive, settings)) as same:
        r = same.post("/api/otp/login", json={"code": code})
        assert r.status_code == 200, r.text
        assert same.app.state.pacs.settings.masked()["otp_key_secret"] == "****"  # type: ignore[attr-defined]


@pytest.mark.parametrize("named", [True, False], ids=["key_id", "keyless"])
def test_concurrent_redeems_of_one_code_succeed_once(archive, named: bool) -> None:  # noqa: ANN001
    """Eight threads redeem the same code at once (on every database): exactly one wins."""
    keys = OtpKeys(archive.engine)
    issued = keys.issue("10.0.0.1", 60)
    code = encrypt(issued.public_key, f"id=his&password={PASSWORD}")
    barrier = threading.Barrier(8)
    results: list[str] = []

    def redeem() -> None:
        barrier.wait()
        try:
            user, _pw = keys.redeem(code, issued.key_id if named else None, "10.0.0.1", False)
            results.append(user)
        except OtpError:
            results.append("refused")

    threads = [threading.Thread(target=redeem) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == ["his"] + ["refused"] * 7
