"""``POST /api/studies/{uid}/forward`` against a DCMTK storescp (PS3.4 Annex B C-STORE SCU).

The destination is a real storescp (bit-preserving ``+B``, TCP_NODELAY=1) registered in the AE
registry; pacsbox's app runs in-process on a SQLite archive."""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from pacsbox.archive.registry import AEEntry
from pacsbox.archive.users import UserDirectory
from pacsbox.web.app import create_app
from tests.helpers import dataset_bytes, dcmtk_env, free_port, have, make_ct

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not have("/usr/bin/storescp"), reason="DCMTK storescp not installed"),
]

ADMIN = ("boss", "admin-pass-1")
VIEWER = ("vera", "viewer-pass-1")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _wait_port(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    folder = tmp_path / "dest"
    folder.mkdir()
    port = free_port()
    with open(tmp_path / "storescp.log", "wb") as log:
        proc = subprocess.Popen(
            ["/usr/bin/storescp", "-od", str(folder), "-aet", "DEST", "+B", "-dhl", str(port)],
            env=dcmtk_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_port(port)
        yield port, folder
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def client(sqlite_archive: Any) -> Iterator[TestClient]:
    users = UserDirectory(sqlite_archive.engine)
    users.add(ADMIN[0], "admin", ADMIN[1])
    users.add(VIEWER[0], "viewer", VIEWER[1])
    with TestClient(create_app(sqlite_archive)) as c:
        yield c


def _study(archive: Any, folder: Path, n_series: int = 2, per_series: int = 3) -> tuple[str, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    sent: dict[str, Path] = {}
    for s in range(n_series):
        series = generate_uid()
        for i in range(per_series):
            ds = make_ct(study, series, instance_number=i + 1)
            ds.SeriesNumber = s + 1
            path = folder / f"s{s}_i{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            archive.ingest.store_file(path)
            sent[str(ds.SOPInstanceUID)] = path
    return study, sent


def test_forward_study_arrives_byte_identical(
    client: TestClient, sqlite_archive: Any, storescp: tuple[int, Path], tmp_path: Path
) -> None:
    port, folder = storescp
    sqlite_archive.registry.add(AEEntry("DEST", "127.0.0.1", port))
    study, originals = _study(sqlite_archive, tmp_path / "in")
    r = client.post(
        f"/api/studies/{study}/forward", json={"ae_title": "DEST"}, headers=basic(*ADMIN)
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"ae_title": "DEST", "sent": 6, "failed": 0, "warnings": 0, "errors": []}
    received = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in folder.iterdir()
    }
    assert set(received) == set(originals)
    for uid, path in received.items():
        assert dataset_bytes(path) == dataset_bytes(originals[uid])
    events = client.get("/api/audit?limit=5", headers=basic(*ADMIN)).json()
    events = events["events"] if isinstance(events, dict) else events
    fwd = [e for e in events if e["action"] == "export" and e["study_uid"] == study]
    assert fwd and "forward to DEST" in fwd[0]["detail"] and "6 sent" in fwd[0]["detail"]


def test_missing_file_is_reported_and_the_rest_sent(
    client: TestClient, sqlite_archive: Any, storescp: tuple[int, Path], tmp_path: Path
) -> None:
    port, folder = storescp
    sqlite_archive.registry.add(AEEntry("DEST", "127.0.0.1", port))
    study, _ = _study(sqlite_archive, tmp_path / "in", n_series=1, per_series=3)
    stored = sorted(p for p in sqlite_archive.store.root.rglob("*") if p.is_file())
    victim = [p for p in stored if study in str(p)][0]
    victim.unlink()
    r = client.post(
        f"/api/studies/{study}/forward", json={"ae_title": "DEST"}, headers=basic(*ADMIN)
    )
    body = r.json()
    assert r.status_code == 200, r.text
    assert (body["sent"], body["failed"]) == (2, 1)
    assert len(body["errors"]) == 1 and "No such file" in body["errors"][0]
    assert len(list(folder.iterdir())) == 2


def test_errors(client: TestClient, sqlite_archive: Any, tmp_path: Path) -> None:
    study, _ = _study(sqlite_archive, tmp_path / "in", n_series=1, per_series=1)
    admin = basic(*ADMIN)
    closed = free_port()
    sqlite_archive.registry.add(AEEntry("NOBODY", "127.0.0.1", closed))
    sqlite_archive.registry.add(AEEntry("OFF", "127.0.0.1", closed, enabled=False))

    def post(uid: str, title: str, who: dict[str, str] = admin) -> Any:
        return client.post(f"/api/studies/{uid}/forward", json={"ae_title": title}, headers=who)

    r = post(study, "NOBODY")
    assert r.status_code == 502 and "cannot send to NOBODY" in r.json()["error"]["message"]
    assert post(study, "UNKNOWN").status_code == 404
    assert post("1.2.3.4", "NOBODY").status_code == 404
    assert post("not-a-uid", "NOBODY").status_code == 400
    assert post(study, "OFF").status_code == 409
    assert post(study, "NOBODY", basic(*VIEWER)).status_code == 403
    r = client.post(f"/api/studies/{study}/forward", json={}, headers=admin)
    assert r.status_code == 400
