"""`pacsbox serve` with its HTTP listener (SPEC E3, E8): the real process tree, real HTTP(S)
over loopback, the default admin's one-time password, supervision of the HTTP worker."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import signal
import ssl
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import Server, free_port, write_study

pytestmark = pytest.mark.interop


def _wait_http(url: str, verify: bool | ssl.SSLContext = True, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", verify=verify, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url}/health did not answer")


def _first_password(server: Server) -> str:
    match = re.search(r"password:\s+(\S+)", server.log.read_text())
    assert match, server.log.read_text()[-2000:]
    return match.group(1)


def _http_pids(server: Server) -> list[int]:
    text = (server.data_dir / "log" / "pacsbox.log").read_text()
    return [
        int(p)
        for p in re.findall(r"\[http-\d+\] uvicorn.error: Started server process \[(\d+)\]", text)
    ]


def test_serve_http_login_change_password_upload(make_server, tmp_path: Path) -> None:  # noqa: ANN001
    http_port = free_port()
    server = make_server(PACSBOX_HTTP_PORT=str(http_port))
    url = f"http://127.0.0.1:{http_port}"
    _wait_http(url)
    out = server.log.read_text()
    assert f"{url}/login" in out  # the banner names the URL
    password = _first_password(server)

    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/api/me").status_code == 401
        r = c.post("/api/login", json={"username": "admin", "password": password})
        assert r.status_code == 200 and r.json()["user"]["must_change_password"]
        csrf = r.json()["csrf_token"]
        session_cookie = next(h for h in r.headers.get_list("set-cookie") if "pacsbox_session" in h)
        assert "HttpOnly" in session_cookie and "Secure" not in session_cookie
        assert c.get("/api/users").status_code == 403
        r = c.post(
            "/api/me/password",
            json={"current_password": password, "new_password": "the-new-admin-pw"},
            headers={"X-CSRF-Token": csrf},
        )
        assert r.status_code == 200, r.text
        assert [u["username"] for u in c.get("/api/users").json()] == ["admin"]
        paths = write_study(tmp_path / "in", 1, 2)
        files = [("file", (p.name, p.read_bytes(), "application/dicom")) for p in paths]
        r = c.post("/api/instances", files=files, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200 and r.json()["stored"] == 2
        study = r.json()["results"][0]["study_instance_uid"]
        assert c.get(f"/api/studies/{study}").json()["num_instances"] == 2
        assert "pacsbox_http_requests_total" in c.get("/metrics").text

    # the CLI sees the same users (the DB holds them)
    listed = server.cli("user", "list", "--json")
    assert '"username": "admin"' in listed.stdout
    # the one-time password never reached the log file
    log_text = (server.data_dir / "log" / "pacsbox.log").read_text()
    assert password not in log_text and "the-new-admin-pw" not in log_text
    assert re.search(r"\[http-0\] pacsbox.http: POST /api/login 200 user=admin", log_text)

    # a dead HTTP worker is restarted by the supervisor
    pids = _http_pids(server)
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(_http_pids(server)) < 2:
        time.sleep(0.1)
    assert len(_http_pids(server)) == 2
    _wait_http(url)
    r = httpx.get(f"{url}/api/me", auth=("admin", "the-new-admin-pw"), timeout=10)
    assert r.status_code == 200


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pacsbox-web-test")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    crt, pem = tmp_path / "web.crt", tmp_path / "web.key"
    crt.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


def test_serve_https_secure_cookie(make_server, cert: tuple[Path, Path]) -> None:  # noqa: ANN001
    http_port = free_port()
    server = make_server(
        PACSBOX_HTTP_PORT=str(http_port),
        PACSBOX_HTTP_TLS_CERT=str(cert[0]),
        PACSBOX_HTTP_TLS_KEY=str(cert[1]),
    )
    url = f"https://127.0.0.1:{http_port}"
    trust = ssl.create_default_context(cafile=str(cert[0]))
    _wait_http(url, verify=trust)
    assert f"{url}/login" in server.log.read_text()
    password = _first_password(server)
    with httpx.Client(base_url=url, verify=trust, timeout=30) as c:
        r = c.post("/api/login", json={"username": "admin", "password": password})
        assert r.status_code == 200
        session_cookie = next(h for h in r.headers.get_list("set-cookie") if "pacsbox_session" in h)
        assert "Secure" in session_cookie and "HttpOnly" in session_cookie
        assert c.get("/api/me").json()["user"]["username"] == "admin"
    # plain HTTP on the HTTPS port gets nowhere
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=5)
