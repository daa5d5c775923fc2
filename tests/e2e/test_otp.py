"""HIS/RIS one-time-password login in the browser (SPEC E6): the "HIS" (this test, in Python)
fetches a one-time key, encrypts ``id=..&password=..`` with RSA-OAEP-SHA256 and opens
``/#/list?code=...``; the web application posts the code, lands logged in, and the code is
gone from the address bar. The same code in another fresh browser is refused."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from tests.e2e.util import shot
from tests.helpers import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

USER, PASSWORD = "his-user", "his-Pass-4242"


def his_code(base_url: str, text: str) -> tuple[str, str]:
    """What a HIS does: GET /api/otp (no login), encrypt, base64."""
    r = httpx.get(f"{base_url}/api/otp", timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["algorithm"] == "RSA-OAEP-SHA256"
    key = serialization.load_pem_public_key(body["public_key"].encode())
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    ciphertext = key.encrypt(text.encode(), oaep)  # type: ignore[union-attr]
    return base64.b64encode(ciphertext).decode(), body["key_id"]


def _me(page: Any) -> int:
    # as the web app asks (X-Requested-With): a 401 then carries no Basic challenge, which
    # would open Chromium's password dialog
    return page.evaluate(
        "async () => (await fetch('/api/me', {headers: {'X-Requested-With': 'pacsbox-ui'}})).status"
    )


def test_otp_link_logs_the_browser_in(pacs: Any, new_page: Any) -> None:
    pacs.add_user(USER, "radiologist", PASSWORD)
    code, _key_id = his_code(pacs.url, f"id={USER}&password={PASSWORD}")
    assert "+" in code or "/" in code or code.endswith("=")  # raw base64 in the URL, as HISes do

    page = new_page()
    page.goto(f"{pacs.url}/#/list?code={code}&patientid=SH*")
    page.wait_for_function("() => !location.hash.includes('code=')")
    page.wait_for_function("() => document.querySelector('[data-ready]') !== null")
    assert _me(page) == 200
    me = page.evaluate("async () => (await fetch('/api/me')).json()")
    assert me["user"]["username"] == USER and me["auth"] == "session"
    assert "code=" not in page.url and "patientid=SH" in page.url  # the search survives
    shot(page, "otp-logged-in")
    # replaced, not pushed: Back does not bring the code back
    page.go_back()
    assert "code=" not in page.url, page.url

    # the same code once more, in another fresh browser: refused, not logged in
    other = new_page()
    other.goto(f"{pacs.url}/#/list?code={code}")
    other.wait_for_function("() => !location.hash.includes('code=')")
    other.wait_for_function("() => document.querySelector('[data-ready]') !== null")
    assert _me(other) == 401
    shot(other, "otp-reused")

    # a wrong password in a valid code: refused as well
    code, key_id = his_code(pacs.url, f"id={USER}&password=wrong-password")
    third = new_page()
    third.goto(f"{pacs.url}/#/viewer?code={code}&key_id={key_id}")
    third.wait_for_function("() => !location.hash.includes('code=')")
    third.wait_for_function("() => document.querySelector('[data-ready]') !== null")
    assert _me(third) == 401

    # the OTP events are in the audit log
    events = pacs.api.get("/api/audit", params={"user": USER}).json()
    assert any(e["action"] == "login" and "one-time" in e["detail"] for e in events), events
    assert any(e["action"] == "login-failed" for e in events), events


def test_integrator_script_across_http_workers(make_server: Any) -> None:
    """scripts/otp_login_example.py against a server with two HTTP worker processes: the key
    is issued by one process and redeemed by whichever the next connection reaches (the
    private keys are in the database). Five rounds, each a new connection."""
    http_port = free_port()
    server = make_server(
        name="otp-workers", PACSBOX_HTTP_PORT=str(http_port), PACSBOX_HTTP_WORKERS="2"
    )
    added = server.cli("user", "add", USER, "--role", "viewer", "--password", PASSWORD)
    assert added.returncode == 0, added.stdout + added.stderr
    script = Path(__file__).resolve().parents[2] / "scripts" / "otp_login_example.py"
    url = f"http://127.0.0.1:{http_port}"
    for _ in range(5):
        run = subprocess.run(
            [sys.executable, str(script), url, USER, PASSWORD, "--login"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"'username': '{USER}'" in run.stdout
    bad = subprocess.run(
        [sys.executable, str(script), url, USER, "wrong-password", "--login"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "refused: 401" in bad.stderr
    link = subprocess.run(
        [sys.executable, str(script), url, USER, PASSWORD, "--param", "patientid=123"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert link.returncode == 0 and link.stdout.startswith(f"{url}/#/list?patientid=123&code=")
