"""HIS/RIS links into the browser application (SPEC E6, issue 6 item 6): ``id``/``password``
URL parameters (setting ``url_login_enabled``) and the one-time-password ``Code=`` flow. The
credentials must leave the address bar and the history; the other parameters drive the page.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.conftest import ADMIN_PASSWORD, Pacs, _wait_http
from tests.e2e.test_ui import TODAY, _ready, _study_files
from tests.e2e.util import shot
from tests.helpers import Server, free_port, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

HIS_USER, HIS_PASSWORD = "hisuser", "his-Pass-123+&="  # characters that need URL encoding


@pytest.fixture(scope="module")
def his_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    """A server with URL login enabled, a HIS user and one study (patient U1)."""
    root = tmp_path_factory.mktemp("e2e-urllogin")
    data_dir = root / "data"
    data_dir.mkdir()
    port, http_port = free_port(), free_port()
    env = server_env(
        data_dir, port, None, PACSBOX_HTTP_PORT=str(http_port), PACSBOX_URL_LOGIN_ENABLED="true"
    )
    server = Server(data_dir, port, env).start()
    url = f"http://127.0.0.1:{http_port}"
    try:
        _wait_http(url)
        first = re.search(r"password:\s+(\S+)", server.log.read_text())
        assert first, server.log.read_text()[-2000:]
        with httpx.Client(base_url=url, timeout=30) as c:
            r = c.post("/api/login", json={"username": "admin", "password": first.group(1)})
            c.post(
                "/api/me/password",
                json={"current_password": first.group(1), "new_password": ADMIN_PASSWORD},
                headers={"X-CSRF-Token": r.json()["csrf_token"]},
            ).raise_for_status()
        pacs = Pacs(server, url, port)
        pacs.add_user(HIS_USER, "radiologist", HIS_PASSWORD)
        assert pacs.api.get("/api/ui-config").json()["url_login"] is True
        yield pacs
        pacs.api.close()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def his_study(his_pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder: Path = tmp_path_factory.mktemp("his-study")
    uid, files = _study_files(folder, "U1", "Url^Ursula", TODAY, "MR", "HIS study", "HISACC1")
    his_pacs.store(files)
    return uid


def _no_secret_anywhere(page: Any, *secrets: str) -> None:
    assert all(s not in page.url for s in secrets), page.url
    for s in secrets:
        assert quote(s, safe="") not in page.url


def test_id_password_login_is_removed_from_url_and_history(
    his_pacs: Pacs, his_study: str, new_page: Any
) -> None:
    page = new_page()
    link = (
        f"{his_pacs.url}/#/list?id={HIS_USER}&password={quote(HIS_PASSWORD, safe='')}&patientid=U1"
    )
    page.goto(link)
    _ready(page)
    assert page.url.endswith("#/list?patientid=U1"), page.url
    _no_secret_anywhere(page, HIS_PASSWORD, "password=", "?id=", "&id=")
    rows = page.locator(".results tbody tr.clickable")
    assert rows.count() == 1 and "U1" in rows.inner_text()
    me = page.evaluate("async () => (await fetch('/api/me')).json()")
    assert me["user"]["username"] == HIS_USER
    # the history entry was replaced: back leaves the app, forward returns without credentials
    page.go_back()
    page.go_forward()
    _ready(page)
    _no_secret_anywhere(page, HIS_PASSWORD, "password=")
    shot(page, "ui-url-login")


def test_url_login_to_the_viewer_by_accession(
    his_pacs: Pacs, his_study: str, new_page: Any
) -> None:
    page = new_page()
    page.goto(
        f"{his_pacs.url}/#/viewer?id={HIS_USER}&password={quote(HIS_PASSWORD, safe='')}"
        "&accessionnumber=HISACC1"
    )
    page.wait_for_url(re.compile(r"/viewer/ohif/viewer\?StudyInstanceUIDs="), timeout=15000)
    assert page.url.endswith(f"StudyInstanceUIDs={his_study}")
    _no_secret_anywhere(page, HIS_PASSWORD)


def test_wrong_url_password_is_removed_and_refused(his_pacs: Pacs, new_page: Any) -> None:
    page = new_page()
    page.goto(f"{his_pacs.url}/#/list?id={HIS_USER}&password=wrong-one-1&patientid=U1")
    _ready(page)
    assert "#/login" in page.url
    _no_secret_anywhere(page, "wrong-one-1")
    assert "wrong user name or password" in page.inner_text(".toasts")


def _otp_code(url: str, plaintext: str) -> str:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    key = httpx.get(f"{url}/api/otp").json()
    public = serialization.load_pem_public_key(key["public_key"].encode())
    cipher = public.encrypt(  # type: ignore[union-attr]
        plaintext.encode(),
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    return base64.b64encode(cipher).decode()


def test_otp_code_login_single_use(his_pacs: Pacs, his_study: str, new_page: Any) -> None:
    plaintext = f"id={HIS_USER}&password={quote(HIS_PASSWORD, safe='')}"
    # a code with '+' or '/' left raw in the link (as many HIS do) must survive the hash
    for _ in range(20):
        code = _otp_code(his_pacs.url, plaintext)
        if "+" in code:
            break
    page = new_page()
    page.goto(f"{his_pacs.url}/#/list?Code={code}&patientid=U1")
    _ready(page)
    assert page.url.endswith("#/list?patientid=U1"), page.url
    assert code[:20] not in page.url
    assert page.locator(".results tbody tr.clickable").count() == 1
    # single use: the same code in another browser is refused
    other = new_page()
    other.goto(f"{his_pacs.url}/#/list?code={quote(code, safe='')}&patientid=U1")
    _ready(other)
    assert "#/login" in other.url
    assert "Login failed" in other.inner_text(".toasts")
    # with the key_id a HIS/RIS may add (as GET /api/otp answered it)
    key = httpx.get(f"{his_pacs.url}/api/otp").json()
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    public = serialization.load_pem_public_key(key["public_key"].encode())
    cipher = public.encrypt(  # type: ignore[union-attr]
        plaintext.encode(),
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    code = quote(base64.b64encode(cipher).decode(), safe="")
    third = new_page()
    third.goto(f"{his_pacs.url}/#/viewer?code={code}&key_id={key['key_id']}&patientid=U1")
    third.wait_for_url(re.compile(r"/viewer/ohif/viewer\?StudyInstanceUIDs="), timeout=15000)
    assert third.url.endswith(f"StudyInstanceUIDs={his_study}")
