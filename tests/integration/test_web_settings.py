"""PATCH /api/settings on a real ``pacsbox serve``: admin only, CSRF for sessions, written to
the config file (comments kept) and picked up by the DICOM worker processes; keys that need a
restart are a 400, keys pinned by the environment a 409; every change audited."""

from __future__ import annotations

import base64
import time
import tomllib

import httpx
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.helpers import free_port

pytestmark = pytest.mark.xdist_group("web_settings")
ADMIN = ("setboss", "Settings-pass-1")
VIEWER = ("setview", "Viewer-pass-12")


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _echo_accepted(port: int) -> bool:
    ae = AE("STRANGER")
    ae.add_requested_context(Verification)
    ae.acse_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSBOX")
    ok = assoc.is_established
    if ok:
        assoc.release()
    return ok


def test_patch_settings_reaches_the_dicom_workers(make_server) -> None:  # noqa: ANN001
    http_port = free_port()
    server = make_server(
        PACSBOX_HTTP_PORT=str(http_port),
        PACSBOX_DUPLICATE_POLICY="replace",  # pinned by the environment
    )
    for (name, pw), role in ((ADMIN, "admin"), (VIEWER, "viewer")):
        out = server.cli("user", "add", name, "--role", role, "--password", pw)
        assert out.returncode == 0, out.stderr
    config = server.data_dir.parent / "pacsbox-test.toml"
    http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30)
    try:
        assert not _echo_accepted(server.port)  # unknown AE, permissive_aes off

        r = http.patch("/api/settings", json={"permissive_aes": True}, headers=_basic(*VIEWER))
        assert r.status_code == 403
        # a session needs the CSRF token
        login = http.post("/api/login", json={"username": ADMIN[0], "password": ADMIN[1]})
        assert login.status_code == 200
        csrf = login.json()["csrf_token"]
        r = http.patch("/api/settings", json={"permissive_aes": True})
        assert r.status_code == 403
        r = http.patch(
            "/api/settings", json={"permissive_aes": True}, headers={"X-CSRF-Token": csrf}
        )
        assert r.status_code == 200, r.text
        assert r.json()["changed"] == {"permissive_aes": True}
        assert r.json()["settings"]["permissive_aes"] is True

        # the file: rewritten with the comment kept, the value set
        text = config.read_text()
        assert text.startswith("# settings come from PACSBOX_* variables")
        assert tomllib.loads(text)["permissive_aes"] is True

        # the DICOM worker processes pick it up from the file
        deadline = time.monotonic() + 15
        while not _echo_accepted(server.port):
            assert time.monotonic() < deadline, "permissive_aes not picked up"
            time.sleep(0.5)

        admin = _basic(*ADMIN)
        r = http.patch("/api/settings", json={"dicom_port": 104}, headers=admin)
        assert r.status_code == 400 and "requires restart" in r.text
        r = http.patch("/api/settings", json={"duplicate_policy": "keep"}, headers=admin)
        assert r.status_code == 409 and "PACSBOX_DUPLICATE_POLICY" in r.text
        r = http.patch("/api/settings", json={"stow_max_bytes": 1}, headers=admin)
        assert r.status_code == 400
        r = http.get("/api/settings/runtime", headers=admin)
        assert "permissive_aes" in r.json()["runtime_keys"]
        assert r.json()["pinned_by_environment"] == ["duplicate_policy"]
        assert "dicom_port" not in tomllib.loads(config.read_text())

        events = http.get(
            "/api/audit", params={"action": "admin", "object": "settings"}, headers=admin
        ).json()
        outcomes = sorted(e["outcome"] for e in events)
        assert outcomes == ["failure", "failure", "failure", "success"], events
        assert any("permissive_aes=True" in e["detail"] for e in events)
    finally:
        http.close()
