"""sendtopacs background service (SPEC S7): API security (allowed IPs → 403, credentials →
401, weak passwords refused), one instance per machine, and the API itself (devices, file
list, convert and send jobs with per-file progress) against a real pacsbox."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import dcmread

from pacsbox.sendtopacs.service import ServiceState, check_password, create_app, password_problems
from pacsbox.sendtopacs.settings import SettingsError, load
from tests.helpers import VENV_BIN, free_port, open_server_archive

STRONG = "Corr3ct-Horse-Battery"


def write_settings(tmp_path: Path, **service: object) -> Path:
    path = tmp_path / "stp.json"
    service = {
        "state_dir": str(tmp_path / "state"),
        "lock_file": str(tmp_path / "service.lock"),
        **service,
    }
    path.write_text(json.dumps({"service": service}))
    return path


@pytest.fixture
def client_for(tmp_path: Path) -> Iterator:
    made: list[tuple[ServiceState, TestClient]] = []

    def factory(
        settings: Path, client: tuple[str, int] = ("127.0.0.1", 50000), **kw: str
    ) -> TestClient:
        state = ServiceState(settings, monitors=False)
        state.start()
        tc = TestClient(create_app(state), client=client, base_url="http://127.0.0.1", **kw)
        made.append((state, tc))
        return tc

    yield factory
    for state, tc in made:
        tc.close()
        state.stop()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_credentials_required_when_configured(tmp_path: Path, client_for) -> None:
    client = client_for(write_settings(tmp_path, username="api", password=STRONG))
    r = client.get("/api/status")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Basic ")
    assert r.json()["error"] == "credentials required"
    assert client.get("/api/status", headers=basic("api", "Wrong-Passw0rd!")).status_code == 401
    assert client.get("/api/status", headers=basic("other", STRONG)).status_code == 401
    assert client.get("/api/status", headers={"Authorization": "Basic !!!"}).status_code == 401
    ok = client.get("/api/status", headers=basic("api", STRONG))
    assert ok.status_code == 200 and ok.json()["secured"] is True
    assert client.post("/api/send", json={}).status_code == 401
    assert client.get("/").status_code == 401  # the UI too
    assert client.get("/api/health").status_code == 200  # health only
    # the settings never show the secret
    s = client.get("/api/settings", headers=basic("api", STRONG)).json()
    assert s["service"]["password"] == "" and s["service"]["password_set"] is True


def test_argon2_credentials_from_cli(tmp_path: Path, client_for) -> None:
    settings = write_settings(tmp_path)
    res = subprocess.run(
        [
            str(VENV_BIN / "sendtopacs"),
            "--config",
            str(settings),
            "service",
            "set-credentials",
            "admin",
            "--password-stdin",
        ],
        input=STRONG + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    stored = json.loads(settings.read_text())["service"]
    assert stored["password_hash"].startswith("$argon2") and STRONG not in settings.read_text()
    client = client_for(settings)
    assert client.get("/api/files").status_code == 401
    assert client.get("/api/files", headers=basic("admin", STRONG)).status_code == 200


@pytest.mark.parametrize(
    "password, missing",
    [
        ("Short1!", "at least 12 characters"),
        ("alllowercase-123", "an upper-case letter"),
        ("ALLUPPERCASE-123", "a lower-case letter"),
        ("NoDigitsHere-!!", "a digit"),
        ("NoSpecials12345", "a special character"),
        ("Admin-Passw0rd-X", "not containing the user name"),
    ],
)
def test_weak_passwords_refused(password: str, missing: str) -> None:
    assert missing in password_problems(password, "admin")
    with pytest.raises(ValueError, match="too weak"):
        check_password(password, "admin")


def test_weak_password_refused_at_configuration_time(tmp_path: Path) -> None:
    settings = write_settings(tmp_path)
    res = subprocess.run(
        [
            str(VENV_BIN / "sendtopacs"),
            "--config",
            str(settings),
            "service",
            "set-credentials",
            "admin",
            "--password-stdin",
        ],
        input="password1\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "too weak" in res.stderr and "at least 12 characters" in res.stderr
    assert "password_hash" not in json.loads(settings.read_text())["service"]
    # a pre-seeded file with a weak plain password does not load (the service will not start)
    weak = write_settings(tmp_path, username="api", password="Password1")
    with pytest.raises(SettingsError, match="too weak"):
        load(weak)
    res = subprocess.run(
        [
            str(VENV_BIN / "sendtopacs"),
            "--config",
            str(weak),
            "service",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "too weak" in res.stderr


def test_address_not_allowed_gets_403(tmp_path: Path, client_for) -> None:
    settings = write_settings(tmp_path)
    outsider = client_for(settings, client=("192.0.2.7", 40000))
    r = outsider.get("/api/status")
    assert r.status_code == 403 and "192.0.2.7" in r.json()["error"]
    assert outsider.get("/").status_code == 403
    assert outsider.get("/api/health").status_code == 403
    assert client_for(settings).get("/api/status").status_code == 200  # 127.0.0.1
    assert client_for(settings, client=("::1", 40000)).get("/api/status").status_code == 200
    # a network in the list admits it; credentials still apply on top
    settings2 = write_settings(
        tmp_path, allowed_ips=["127.0.0.1", "192.0.2.0/24"], username="api", password=STRONG
    )
    c = client_for(settings2, client=("192.0.2.7", 40000))
    assert c.get("/api/status").status_code == 401
    assert c.get("/api/status", headers=basic("api", STRONG)).status_code == 200
    assert client_for(settings2, client=("198.51.100.1", 1)).get("/api/status").status_code == 403


def test_cross_site_and_rebinding_refused(tmp_path: Path, client_for) -> None:
    client = client_for(write_settings(tmp_path))
    r = client.post("/api/files/paths", json={"paths": []}, headers={"Origin": "https://evil.test"})
    assert r.status_code == 403 and "cross-site" in r.json()["error"]
    r = client.get("/api/status", headers={"Host": "evil.test"})
    assert r.status_code == 403


def test_settings_put_validates_and_keeps_secrets(tmp_path: Path, client_for) -> None:
    settings = write_settings(tmp_path, username="api", password=STRONG)
    client = client_for(settings, headers=basic("api", STRONG))
    current = client.get("/api/settings").json()
    bad = dict(current, ae_title="WAY-TOO-LONG-AE-TITLE")
    r = client.put("/api/settings", json=bad)
    assert r.status_code == 400 and "AE title" in r.json()["error"]
    bad = dict(current, monitors=[{"path": "relative/path"}])
    assert client.put("/api/settings", json=bad).status_code == 400
    changed = dict(current, institution_name="Clinic", service=dict(current["service"]))
    changed["service"]["username"] = "intruder"  # credentials cannot change through the API
    r = client.put("/api/settings", json=changed)
    assert r.status_code == 200, r.text
    on_disk = json.loads(settings.read_text())
    assert on_disk["institution_name"] == "Clinic"
    assert on_disk["service"]["username"] == "api" and on_disk["service"]["password"] == STRONG
    assert client.put("/api/settings", content=b"{nope").status_code == 400


def _wait_health(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"service exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("service did not answer")


def test_one_instance_per_machine(tmp_path: Path) -> None:
    port = free_port()
    settings = write_settings(tmp_path, username="api", password=STRONG, port=port)
    cmd = [str(VENV_BIN / "sendtopacs"), "service", "--settings", str(settings)]
    first = subprocess.Popen(
        [*cmd, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_health(port, first)
        r = httpx.get(f"http://127.0.0.1:{port}/api/status")
        assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"]
        r = httpx.get(f"http://127.0.0.1:{port}/api/status", auth=("api", STRONG))
        assert r.status_code == 200 and r.json()["pid"] == first.pid
        second = subprocess.run(
            [*cmd, "--port", str(free_port())], capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 3
        assert "another sendtopacs service is running" in second.stderr
        assert f"pid {first.pid}" in second.stderr
    finally:
        first.terminate()
        first.wait(20)
    assert first.returncode == 0
    assert not (tmp_path / "state" / "temp").exists()  # clean_temp_on_exit (the default)
    # the lock went with it: a new one starts
    again = subprocess.Popen(
        [*cmd, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_health(port, again)
        # desktop integration: "Send to PACS" adds files to the running service's list
        env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "share")}
        res = subprocess.run(
            [str(VENV_BIN / "sendtopacs"), "--config", str(settings), "service",
             "install-desktop"],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        share = tmp_path / "share"
        entry = (share / "applications" / "sendtopacs-send.desktop").read_text()
        assert "MimeType=image/jpeg;" in entry and f"--config {settings} add %F" in entry
        ui = (share / "applications" / "sendtopacs.desktop").read_text()
        assert f"Exec=xdg-open http://127.0.0.1:{port}/" in ui
        assert (share / "kio" / "servicemenus" / "sendtopacs.desktop").exists()
        script = share / "nautilus" / "scripts" / "Send to PACS"
        a, b = _png(tmp_path / "a b.png"), _png(tmp_path / "c.png", 1)
        nautilus = {**env, "NAUTILUS_SCRIPT_SELECTED_FILE_PATHS": f"{a}\n{b}\n"}
        res = subprocess.run([str(script)], capture_output=True, text=True, timeout=60,
                             env=nautilus)  # fmt: skip
        assert res.returncode == 1 and "needs credentials" in res.stderr
        nautilus |= {"SENDTOPACS_API_USER": "api", "SENDTOPACS_API_PASSWORD": STRONG}
        res = subprocess.run([str(script)], capture_output=True, text=True, timeout=60,
                             env=nautilus)  # fmt: skip
        assert res.returncode == 0 and "2 file(s) added" in res.stdout, res.stdout + res.stderr
        listed = httpx.get(f"http://127.0.0.1:{port}/api/files", auth=("api", STRONG)).json()
        assert sorted(f["path"] for f in listed) == sorted([str(a), str(b)])
    finally:
        again.terminate()
        again.wait(20)


def _png(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
    return path


def stored_uids(server) -> set[str]:  # noqa: ANN001 - tests.helpers.Server
    from sqlalchemy import select

    from pacsbox.archive.index.models import Instance

    arch = open_server_archive(server)
    try:
        with arch.engine.connect() as conn:
            rows = conn.execute(select(Instance.__table__.c.sop_instance_uid)).all()
    finally:
        arch.engine.dispose()
    return {r[0] for r in rows}


def _wait_job(client: TestClient, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_api_send_and_convert_to_pacsbox(tmp_path: Path, client_for, make_server) -> None:
    server = make_server(PACSBOX_PERMISSIVE_AES="true", PACSBOX_PERMISSIVE_AES_ENABLED="true")
    settings = write_settings(tmp_path, remove_sent_from_list=False)
    client = client_for(settings)
    dev = {"name": "pacs", "ae_title": "PACSBOX", "host": "127.0.0.1", "port": server.port}
    assert client.post("/api/devices", json=dev).status_code == 201
    assert client.post("/api/devices", json=dev).status_code == 409
    assert client.post("/api/devices", json={**dev, "name": "x", "port": 0}).status_code == 400
    assert client.post("/api/devices/pacs/echo").json()["ok"] is True
    r = client.put("/api/devices/pacs", json={"files_per_association": 2})
    assert r.status_code == 200 and r.json()["files_per_association"] == 2
    assert client.get("/api/devices").json()[0]["default"] is True
    # a device a monitored folder uses cannot go; the service keeps its settings
    current = client.get("/api/settings").json()
    watched = tmp_path / "watched"
    current["monitors"] = [
        {"path": str(watched), "device": "pacs", "failed_dir": str(tmp_path / "failed")}
    ]
    assert client.put("/api/settings", json=current).status_code == 200
    r = client.delete("/api/devices/pacs")
    assert r.status_code == 400 and "unknown device" in r.json()["error"]
    assert [d["name"] for d in client.get("/api/devices").json()] == ["pacs"]
    assert client.delete("/api/devices/nope").status_code == 404

    photo = _png(tmp_path / "photo.png")
    up = client.post(
        "/api/files",
        files=[
            ("files", ("photo.png", photo.read_bytes(), "image/png")),
            ("files", ("../../evil name.png", photo.read_bytes(), "image/png")),
        ],
    )
    assert up.status_code == 201, up.text
    ids = [f["id"] for f in up.json()]
    assert [f["name"] for f in up.json()] == ["photo.png", "evil name.png"]
    listed = client.post("/api/files/paths", json={"paths": [str(_png(tmp_path / "b.png", 1))]})
    assert listed.status_code == 201 and len(listed.json()["added"]) == 1
    ids.append(listed.json()["added"][0]["id"])

    # non-DICOM files need valid patient data: every problem is listed
    r = client.post("/api/send", json={"files": ids})
    assert r.status_code == 422
    r = client.post(
        "/api/send",
        json={"files": ids, "patient": {"patient_id": "", "birth_date": "2099-01-01"}},
    )
    assert r.status_code == 422
    assert {"patient id: required", "last name: required"} <= set(r.json()["errors"])

    patient = {"patient_id": "API1", "patient_name": "Api^Test", "study_date": "2026-01-02"}
    r = client.post(
        "/api/send",
        json={"files": ids, "patient": patient, "device": "pacs", "options": {"modality": "XC"}},
    )
    assert r.status_code == 202, r.text
    job = _wait_job(client, r.json()["id"])
    assert job["state"] == "done", job
    assert [f["state"] for f in job["files"]] == ["sent"] * 3
    assert all(f["progress"] == 1.0 for f in job["files"])
    assert any("2 association(s)" in line for line in job["log"])  # 3 files, 2 per association
    uids = {f["objects"][0]["sop_instance_uid"] for f in job["files"]}
    assert {f["state"] for f in client.get("/api/files").json()} == {"sent"}
    # stored in pacsbox
    assert stored_uids(server) >= uids

    # convert only: the objects can be downloaded while they are in the temp folder
    r = client.post("/api/convert", json={"files": ids[:1], "patient": patient})
    job = _wait_job(client, r.json()["id"])
    assert job["files"][0]["state"] == "converted"
    uid = job["files"][0]["objects"][0]["sop_instance_uid"]
    got = client.get(f"/api/jobs/{job['id']}/objects/{uid}")
    assert got.status_code == 200 and got.headers["content-type"] == "application/dicom"
    out = tmp_path / "got.dcm"
    out.write_bytes(got.content)
    ds = dcmread(out)
    assert ds.PatientID == "API1" and str(ds.SOPInstanceUID) == uid
    assert client.get(f"/api/jobs/{job['id']}/objects/1.2.3").status_code == 404

    # the file list: remove one, clear the rest; uploads leave the temp folder
    temp_uploads = tmp_path / "state" / "temp" / "uploads"
    assert len(list(temp_uploads.iterdir())) == 2
    assert client.delete(f"/api/files/{ids[0]}").status_code == 200
    assert client.delete(f"/api/files/{ids[0]}").status_code == 404
    assert len(list(temp_uploads.iterdir())) == 1
    assert client.delete("/api/files").json() == {"deleted": 2}
    assert list(temp_uploads.iterdir()) == []
    assert (tmp_path / "b.png").exists()  # a file added by path is never deleted
    assert client.get("/api/nope").status_code == 404


def test_send_failure_reason_per_file(tmp_path: Path, client_for) -> None:
    settings = write_settings(tmp_path, remove_sent_from_list=True)
    client = client_for(settings)
    dev = {"name": "down", "ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port()}
    client.post("/api/devices", json=dev)
    f = client.post("/api/files/paths", json={"paths": [str(_png(tmp_path / "a.png"))]}).json()
    r = client.post(
        "/api/send",
        json={"files": [f["added"][0]["id"]], "patient": {"patient_id": "X", "last_name": "Y"}},
    )
    job = _wait_job(client, r.json()["id"])
    assert job["state"] == "failed"
    assert "connection refused" in job["files"][0]["message"]
    assert client.get("/api/files").json()[0]["state"] == "failed"  # failures stay listed


def test_dicom_files_get_the_settings_tag_updates(tmp_path: Path, client_for, make_server) -> None:
    from sqlalchemy import select

    from pacsbox.archive.index.models import Study
    from tests.helpers import make_ct

    server = make_server(PACSBOX_PERMISSIVE_AES="true", PACSBOX_PERMISSIVE_AES_ENABLED="true")
    settings = write_settings(tmp_path)
    data = json.loads(settings.read_text())
    data["tag_updates"] = [
        {"tag": "StudyDescription", "value": "{Modality} via API", "create": True}
    ]
    data["devices"] = [
        {"name": "p", "ae_title": "PACSBOX", "host": "127.0.0.1", "port": server.port}
    ]
    settings.write_text(json.dumps(data))
    client = client_for(settings)
    ds = make_ct()
    ds.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff")
    added = client.post(
        "/api/files/paths", json={"paths": [str(tmp_path / "ct.dcm"), str(tmp_path / "broken.dcm")]}
    ).json()["added"]
    assert [f["dicom"] for f in added] == [True, True]
    r = client.post("/api/send", json={"files": [f["id"] for f in added]})
    assert r.status_code == 202, r.text  # DICOM only: no patient data needed
    job = _wait_job(client, r.json()["id"])
    states = {f["name"]: f for f in job["files"]}
    assert states["ct.dcm"]["state"] == "sent"
    assert states["broken.dcm"]["state"] == "failed" and states["broken.dcm"]["message"]
    assert any("1 attribute(s) updated" in line for line in job["log"])
    arch = open_server_archive(server)
    try:
        with arch.engine.connect() as conn:
            desc = conn.execute(select(Study.__table__.c.study_description)).scalar_one()
    finally:
        arch.engine.dispose()
    assert desc == "CT via API"
    assert (tmp_path / "ct.dcm").read_bytes()[128:132] == b"DICM"  # the source is untouched


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = subprocess.run(
            [
                str(VENV_BIN / "sendtopacs"),
                "service",
                "--settings",
                str(write_settings(tmp_path)),
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert res.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in res.stderr
    assert not (tmp_path / "state" / "temp").exists()  # nothing left behind


@pytest.fixture
def http_worklist() -> Iterator[tuple[int, list]]:
    """An HTTP JSON worklist with one order; ``pid=boom`` answers 500."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlsplit

    seen: list[dict[str, list[str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            query = parse_qs(urlsplit(self.path).query)
            seen.append(query)
            if query.get("pid") == ["boom"]:
                self.send_response(500)
                self.end_headers()
                return
            body = json.dumps(
                {"orders": [{"id": "WL7", "name": "Muster^Max", "acc": "A77", "dob": "19800202"}]}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_port, seen
    httpd.shutdown()


def _with_worklist(settings: Path, port: int, **device: object) -> Path:
    data = json.loads(settings.read_text())
    data["worklist_devices"] = [
        {
            "name": "his",
            "kind": "http",
            "url": f"http://127.0.0.1:{port}/orders?pid={{patient_id}}",
            "results_path": "orders",
            "mapping": {
                "patient_id": "id",
                "patient_name": "name",
                "accession_number": "acc",
                "birth_date": "dob",
            },
            "fill_patient_name": False,
            **device,
        }
    ]
    settings.write_text(json.dumps(data))
    return settings


def test_worklist_search_through_the_api(tmp_path: Path, client_for, http_worklist) -> None:
    """POST /api/worklist/search with an HTTP JSON worklist served by the test."""
    port, seen = http_worklist
    client = client_for(_with_worklist(write_settings(tmp_path), port))
    assert [d["name"] for d in client.get("/api/worklist/devices").json()] == ["his"]
    r = client.post("/api/worklist/search", json={"device": "his", "query": {"patient_id": "WL7"}})
    assert r.status_code == 200, r.text
    (match,) = r.json()["matches"]
    assert match["patient"]["patient_id"] == "WL7"
    assert match["patient"]["patient_name"] == "Muster^Max"
    assert match["patient"]["accession_number"] == "A77"
    assert match["ref"]
    assert seen[-1]["pid"] == ["WL7"]
    r = client.post("/api/worklist/search", json={"device": "his", "query": {"patient_id": "boom"}})
    assert r.status_code == 502 and "500" in r.json()["error"]
    r = client.post("/api/worklist/search", json={"device": "nope"})
    assert r.status_code == 404
    r = client.post("/api/worklist/search", json={"device": "his", "query": {"colour": "x"}})
    assert r.status_code == 400


def test_worklist_only_refuses_typed_patient_data(
    tmp_path: Path, client_for, http_worklist, make_server
) -> None:
    server = make_server(PACSBOX_PERMISSIVE_AES="true", PACSBOX_PERMISSIVE_AES_ENABLED="true")
    settings = _with_worklist(write_settings(tmp_path), http_worklist[0], worklist_only=True)
    client = client_for(settings)
    dev = {"name": "p", "ae_title": "PACSBOX", "host": "127.0.0.1", "port": server.port}
    assert client.post("/api/devices", json=dev).status_code == 201
    f = client.post("/api/files/paths", json={"paths": [str(_png(tmp_path / "a.png"))]}).json()
    ids = [f["added"][0]["id"]]
    typed = {"patient_id": "TYPED", "last_name": "Typed"}
    r = client.post("/api/send", json={"files": ids, "patient": typed})
    assert r.status_code == 422 and "worklist only" in r.json()["error"]
    r = client.post("/api/send", json={"files": ids, "worklist_ref": "forged"})
    assert r.status_code == 422 and "worklist_ref" in r.json()["error"]
    (match,) = client.post(
        "/api/worklist/search", json={"device": "his", "query": {"patient_id": "WL7"}}
    ).json()["matches"]
    r = client.post(
        "/api/send", json={"files": ids, "worklist_ref": match["ref"], "patient": typed}
    )
    assert r.status_code == 202, r.text
    job = _wait_job(client, r.json()["id"])
    assert job["state"] == "done", job
    r = client.post("/api/convert", json={"files": ids, "worklist_ref": match["ref"]})
    job = _wait_job(client, r.json()["id"])
    uid = job["files"][0]["objects"][0]["sop_instance_uid"]
    got = tmp_path / "got.dcm"
    got.write_bytes(client.get(f"/api/jobs/{job['id']}/objects/{uid}").content)
    ds = dcmread(got)
    assert (ds.PatientID, str(ds.PatientName), ds.AccessionNumber) == ("WL7", "Muster^Max", "A77")


def test_temp_leftovers_of_a_killed_service_are_removed(tmp_path: Path) -> None:
    shared = tmp_path / "shared-temp"
    settings = write_settings(tmp_path, temp_dir=str(shared))
    (shared / "uploads" / "abc").mkdir(parents=True)
    (shared / "uploads" / "abc" / "old.png").write_bytes(b"x")
    (shared / "someone-elses.txt").write_text("keep")
    state = ServiceState(settings, monitors=False)
    state.start()
    assert not (shared / "uploads" / "abc").exists()
    state.stop()
    assert (shared / "someone-elses.txt").read_text() == "keep"  # never touched
    assert not (shared / "uploads").exists() and not (shared / "jobs").exists()


def test_dicom_files_replace_worklist_info(
    tmp_path: Path, client_for, http_worklist, make_server
) -> None:
    """SPEC S3 "replace full worklist info" through the API: the DICOM file arrives with the
    worklist entry's patient and accession; without a picked entry the request is refused."""
    from sqlalchemy import select

    from pacsbox.archive.index.models import Patient, Study
    from tests.helpers import make_ct

    server = make_server(PACSBOX_PERMISSIVE_AES="true", PACSBOX_PERMISSIVE_AES_ENABLED="true")
    client = client_for(_with_worklist(write_settings(tmp_path), http_worklist[0]))
    dev = {"name": "p", "ae_title": "PACSBOX", "host": "127.0.0.1", "port": server.port}
    assert client.post("/api/devices", json=dev).status_code == 201
    ds = make_ct(patient_id="WRONG", patient_name="Wrong^Name")
    ds.AccessionNumber = "OLD"
    ds.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    added = client.post("/api/files/paths", json={"paths": [str(tmp_path / "ct.dcm")]}).json()
    ids = [added["added"][0]["id"]]
    r = client.post("/api/send", json={"files": ids, "replace_worklist_info": True})
    assert r.status_code == 422 and "worklist_ref" in r.json()["error"]
    r = client.post("/api/send", json={"files": ids, "replace_worklist_info": "yes"})
    assert r.status_code == 400
    (match,) = client.post(
        "/api/worklist/search", json={"device": "his", "query": {"patient_id": "WL7"}}
    ).json()["matches"]
    r = client.post(
        "/api/send",
        json={"files": ids, "replace_worklist_info": True, "worklist_ref": match["ref"]},
    )
    assert r.status_code == 202, r.text
    job = _wait_job(client, r.json()["id"])
    assert job["state"] == "done", job
    arch = open_server_archive(server)
    try:
        with arch.engine.connect() as conn:
            pid, name = conn.execute(
                select(Patient.__table__.c.patient_id, Patient.__table__.c.patient_name)
            ).one()
            acc, uid = conn.execute(
                select(Study.__table__.c.accession_number, Study.__table__.c.study_instance_uid)
            ).one()
    finally:
        arch.engine.dispose()
    assert (pid, name, acc) == ("WL7", "Muster^Max", "A77")
    assert uid == ds.StudyInstanceUID  # the worklist gave no Study Instance UID: kept
    assert dcmread(tmp_path / "ct.dcm").PatientID == "WRONG"  # the source is untouched


def test_failed_logins_are_throttled_per_address(tmp_path: Path, client_for) -> None:
    """Brute force on the API: five wrong passwords from one address lock it (429 with
    Retry-After, even with the right password); other addresses are not affected; the lock
    ends, doubles on the next round, and a success resets the count."""
    from pacsbox.sendtopacs.service import AuthThrottle

    settings = write_settings(tmp_path, username="api", password=STRONG)
    attacker = client_for(settings, client=("127.0.0.1", 50001))
    clock = [1000.0]
    state = attacker.app.state.stp
    state.throttle = AuthThrottle(clock=lambda: clock[0])
    for _ in range(5):
        assert (
            attacker.get("/api/status", headers=basic("api", "Wr0ng-password!")).status_code == 401
        )
    locked = attacker.get("/api/status", headers=basic("api", STRONG))
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 30
    assert attacker.get("/api/health").status_code == 200  # health is never locked
    # another address is served (the same app, another client address)
    other = TestClient(attacker.app, client=("::1", 50002), base_url="http://127.0.0.1")
    assert other.get("/api/status", headers=basic("api", STRONG)).status_code == 200
    # requests without credentials do not count towards a lock
    clock[0] += 31
    for _ in range(10):
        assert attacker.get("/api/status").status_code == 401
    assert attacker.get("/api/status", headers=basic("api", STRONG)).status_code == 200
    # the count was reset by the success; the next lock is twice as long
    for _ in range(5):
        attacker.get("/api/status", headers=basic("api", "Wr0ng-password!"))
    assert int(attacker.get("/api/status").headers["retry-after"]) >= 30
    unit = AuthThrottle(clock=lambda: clock[0])
    for _ in range(10):
        unit.failed("x")
    assert unit.locked_for("x") == 60.0  # second lock in a row: doubled
