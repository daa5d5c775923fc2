"""The REST API against create_app(archive): upload through ingest, index reads, delete with
counters, zip export, study search through the query engine, AE registry + echo, users,
settings, audit, health and metrics (SPEC E3, R3)."""

from __future__ import annotations

import base64
import io
import re
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.fileset import FileSet

from pacsbox.archive.importer import import_paths
from pacsbox.archive.index.writer import counts
from pacsbox.archive.users import UserDirectory
from pacsbox.web.app import create_app
from tests.helpers import free_port, write_study

ADMIN = ("boss", "admin-pass-1")
TECH = ("tess", "tech-pass-01")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _client(archive, **overrides) -> TestClient:  # noqa: ANN001
    users = UserDirectory(archive.engine)
    users.add(ADMIN[0], "admin", ADMIN[1])
    users.add(TECH[0], "technician", TECH[1])
    return TestClient(create_app(archive, archive.settings.model_copy(update=overrides)))


@pytest.fixture
def client(archive) -> Iterator[TestClient]:  # noqa: ANN001 - all three databases
    with _client(archive) as c:
        yield c


@pytest.fixture
def sqlite_client(sqlite_archive) -> Iterator[TestClient]:  # noqa: ANN001
    with _client(sqlite_archive, metrics_token="prom-secret-token") as c:
        yield c


def upload(c: TestClient, paths: list[Path], who=TECH) -> dict:  # noqa: ANN001
    files = [("file", (p.name, p.read_bytes(), "application/dicom")) for p in paths]
    r = c.post("/api/instances", files=files, headers=basic(*who))
    return {"code": r.status_code, **r.json()}


def test_upload_read_delete_with_counters_on_every_db(
    client: TestClient,
    archive,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    paths = write_study(tmp_path / "in", n_series=2, per_series=3)
    res = upload(client, paths)
    assert res["code"] == 200 and res["stored"] == 6, res
    assert {r["status"] for r in res["results"]} == {"0000"}
    study = res["results"][0]["study_instance_uid"]
    admin = basic(*ADMIN)

    s = client.get(f"/api/studies/{study}", headers=admin).json()
    assert (s["num_series"], s["num_instances"], s["patient_id"]) == (2, 6, "PAT001")
    series = client.get(f"/api/studies/{study}/series", headers=admin).json()
    assert len(series) == 2 and all(x["num_instances"] == 3 for x in series)
    insts = client.get(
        f"/api/series/{series[0]['series_instance_uid']}/instances", headers=admin
    ).json()
    assert [i["instance_number"] for i in insts] == [1, 2, 3]
    one = client.get(f"/api/instances/{insts[0]['sop_instance_uid']}", headers=admin).json()
    assert one["study_instance_uid"] == study

    # the technician may not delete
    r = client.delete(f"/api/instances/{insts[0]['sop_instance_uid']}", headers=basic(*TECH))
    assert r.status_code == 403
    # instance → counters of series, study and patient follow
    r = client.delete(f"/api/instances/{insts[0]['sop_instance_uid']}", headers=admin)
    assert r.status_code == 200 and r.json()["instances"] == 1
    s = client.get(f"/api/studies/{study}", headers=admin).json()
    assert (s["num_series"], s["num_instances"]) == (2, 5)
    assert (
        client.get(f"/api/instances/{insts[0]['sop_instance_uid']}", headers=admin).status_code
        == 404
    )
    # series
    r = client.delete(f"/api/series/{series[0]['series_instance_uid']}", headers=admin)
    assert r.json()["instances"] == 2 and r.json()["series"] == 1
    s = client.get(f"/api/studies/{study}", headers=admin).json()
    assert (s["num_series"], s["num_instances"]) == (1, 3)
    # study → the patient goes too, and every file
    r = client.delete(f"/api/studies/{study}", headers=admin)
    assert r.status_code == 200 and r.json()["instances"] == 3
    assert counts(archive.engine) == {"patients": 0, "studies": 0, "series": 0, "instances": 0}
    assert list(archive.store.iter_keys()) == []
    assert client.delete(f"/api/studies/{study}", headers=admin).status_code == 404
    # every deletion is in the audit log
    audit = client.get("/api/audit", params={"action": "delete"}, headers=admin)
    assert audit.headers["x-total-count"] == "3"
    assert {e["study_uid"] for e in audit.json()} == {study}
    # re-upload after the delete works (cached parent ids were dropped)
    assert upload(client, paths[:2])["stored"] == 2


def test_upload_reports_each_file(sqlite_client: TestClient, tmp_path: Path) -> None:
    good = write_study(tmp_path / "in", 1, 1)[0]
    bad = tmp_path / "notes.txt"
    bad.write_bytes(b"not dicom at all")
    truncated = tmp_path / "cut.dcm"
    truncated.write_bytes(good.read_bytes()[:-100])
    res = upload(sqlite_client, [good, bad, truncated])
    assert res["code"] == 202 and res["stored"] == 1 and res["failed"] == 2
    by_file = {r["file"]: r for r in res["results"]}
    assert by_file[good.name]["status"] == "0000"
    assert by_file["notes.txt"]["status"] == "C000"
    assert by_file["cut.dcm"]["status"] == "C000" and "incomplete" in by_file["cut.dcm"]["message"]
    res = upload(sqlite_client, [bad])
    assert res["code"] == 409 and res["error"]["status"] == 409
    # a viewer-level upload is refused; non-multipart is 415
    r = sqlite_client.post("/api/instances", content=b"x", headers=basic(*TECH))
    assert r.status_code == 415


def test_upload_streams_parts_to_data_tmp_with_a_size_limit(
    sqlite_archive,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    paths = write_study(tmp_path / "in", 1, 3)
    size = sum(p.stat().st_size for p in paths)
    with _client(sqlite_archive, stow_max_bytes=size + 2000) as c:
        # plain form fields are ignored, file parts stored; data/tmp is left empty
        files = [("file", (p.name, p.read_bytes(), "application/dicom")) for p in paths]
        r = c.post("/api/instances", files=files, data={"note": "x"}, headers=basic(*TECH))
        assert r.status_code == 200 and r.json()["stored"] == 3, r.text
        assert list((Path(sqlite_archive.settings.data_dir) / "tmp").glob("*.part")) == []
        # over the limit: 413 (declared length, or counted while streaming without one)
        files += [("file", ("big.dcm", b"\0" * 5000, "application/dicom"))]
        r = c.post("/api/instances", files=files, headers=basic(*TECH))
        assert r.status_code == 413
        boundary = "b0undary"
        body = (
            (
                f"--{boundary}\r\nContent-Disposition: form-data; name=f; filename=a.dcm\r\n\r\n"
            ).encode()
            + b"\0" * (size + 5000)
            + f"\r\n--{boundary}--\r\n".encode()
        )

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(body), 4096):
                yield body[i : i + 4096]

        r = c.post(
            "/api/instances",
            content=chunks(),
            headers={**basic(*TECH), "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert r.status_code == 413
        assert list((Path(sqlite_archive.settings.data_dir) / "tmp").glob("*.part")) == []
        # a body without any file part
        field = f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nx\r\n'
        r = c.post(
            "/api/instances",
            content=(field + f"--{boundary}--\r\n").encode(),
            headers={**basic(*TECH), "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert r.status_code == 400 and "no file" in r.text


def test_study_search_through_query_engine(client: TestClient, tmp_path: Path) -> None:
    write = write_study
    a = write(tmp_path / "a", 1, 2, patient_name="Smith^Anna", patient_id="P1")
    b = write(tmp_path / "b", 1, 1, patient_name="Jones^Bob", patient_id="P2")
    assert upload(client, a + b)["stored"] == 3
    h = basic(*TECH)
    r = client.get("/api/studies", params={"PatientName": "smith*"}, headers=h)
    assert r.status_code == 200
    rows = r.json()
    assert len(rows) == 1 and rows[0]["PatientID"] == "P1"
    assert rows[0]["NumberOfStudyRelatedInstances"] == 2
    assert len(client.get("/api/studies", headers=h).json()) == 2
    assert len(client.get("/api/studies", params={"limit": 1}, headers=h).json()) == 1
    assert client.get("/api/studies", params={"limit": 1, "offset": 5}, headers=h).json() == []
    assert (
        client.get("/api/studies", params={"PatientID": "P2"}, headers=h).json()[0]["PatientName"]
        == "Jones^Bob"
    )
    assert client.get("/api/studies", params={"StudyDate": "2026-xx"}, headers=h).status_code == 400
    assert client.get("/api/studies", params={"Bogus": "1"}, headers=h).status_code == 400


def test_study_zip_export(sqlite_client: TestClient, sqlite_archive, tmp_path: Path) -> None:  # noqa: ANN001
    paths = write_study(tmp_path / "in", 2, 2)
    res = upload(sqlite_client, paths)
    study = res["results"][0]["study_instance_uid"]
    assert (
        sqlite_client.get(f"/api/studies/{study}/archive", headers=basic(*TECH)).status_code == 403
    )
    r = sqlite_client.get(f"/api/studies/{study}/archive", headers=basic(*ADMIN))
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    names = zf.namelist()
    # a File-set (PS3.10 §8): the DICOMDIR first, instances under PS3.10 file IDs
    assert names[0] == "DICOMDIR" and len(names) == 5
    assert all(re.fullmatch(r"DICOM(/[A-Z0-9_]{1,8}){4}", n) for n in names[1:]), names
    sent = {dcmread(p).SOPInstanceUID: dcmread(p) for p in paths}
    for name in names[1:]:
        ds = dcmread(io.BytesIO(zf.read(name)))
        assert ds.PixelData == sent[ds.SOPInstanceUID].PixelData
    out = tmp_path / "unzipped"
    zf.extractall(out)
    fs = FileSet(dcmread(out / "DICOMDIR"))
    assert {i.SOPInstanceUID for i in fs} == set(sent)
    for rec in dcmread(out / "DICOMDIR").DirectoryRecordSequence:
        if "ReferencedFileID" in rec:
            assert "/".join(rec.ReferencedFileID) in names
    # the unzipped folder imports again through its DICOMDIR
    sqlite_client.delete(f"/api/studies/{study}", headers=basic(*ADMIN))
    report = import_paths(sqlite_archive.ingest, [out])
    assert (report.stored, report.failed) == (4, [])
    stores = sqlite_client.get("/api/audit", params={"action": "store"}, headers=basic(*ADMIN))
    imported = [e for e in stores.json() if e["detail"].startswith("import:")]
    assert [(e["study_uid"], e["username"][:4]) for e in imported] == [(study, "CLI:")]
    assert imported[0]["detail"].startswith("import: 4 instance(s) (4 new")
    series_uid = res["results"][0]["series_instance_uid"]
    r = sqlite_client.get(f"/api/series/{series_uid}/archive", headers=basic(*ADMIN))
    assert len(zipfile.ZipFile(io.BytesIO(r.content)).namelist()) == 3
    exports = sqlite_client.get("/api/audit", params={"action": "export"}, headers=basic(*ADMIN))
    assert exports.headers["x-total-count"] == "2"


def test_ae_registry_crud_and_echo(sqlite_client: TestClient) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    h = basic(*ADMIN)
    port = free_port()
    r = sqlite_client.post(
        "/api/aes", json={"ae_title": "PEER", "host": "127.0.0.1", "port": port}, headers=h
    )
    assert r.status_code == 201
    assert (
        sqlite_client.post(
            "/api/aes", json={"ae_title": "PEER", "host": "h", "port": 1}, headers=h
        ).status_code
        == 400
    )
    assert (
        sqlite_client.post(
            "/api/aes", json={"ae_title": "BAD\\AE", "host": "h", "port": 1}, headers=h
        ).status_code
        == 400
    )
    assert (
        sqlite_client.post(
            "/api/aes", json={"ae_title": "X", "host": "h", "port": 70000}, headers=h
        ).status_code
        == 400
    )
    # nobody listens yet
    r = sqlite_client.post("/api/aes/PEER/echo", headers=basic(*TECH))
    assert r.status_code == 200 and r.json()["ok"] is False
    peer = AE(ae_title="PEER")
    peer.add_supported_context(Verification)
    server = peer.start_server(("127.0.0.1", port), block=False)
    try:
        r = sqlite_client.post("/api/aes/PEER/echo", headers=basic(*TECH))
        assert r.json() == {"ae_title": "PEER", "ok": True, "status": "0000", "message": "success"}
    finally:
        server.shutdown()
    r = sqlite_client.patch("/api/aes/PEER", json={"enabled": False, "port": 104}, headers=h)
    assert r.json()["enabled"] is False and r.json()["port"] == 104
    assert sqlite_client.get("/api/aes/PEER", headers=basic(*TECH)).json()["port"] == 104
    assert sqlite_client.delete("/api/aes/PEER", headers=h).status_code == 200
    assert sqlite_client.get("/api/aes/PEER", headers=h).status_code == 404
    admin_events = sqlite_client.get("/api/audit", params={"action": "admin"}, headers=h).json()
    assert {e["object"] for e in admin_events} >= {"ae:PEER"}


def test_users_api(sqlite_client: TestClient) -> None:
    h = basic(*ADMIN)
    r = sqlite_client.post(
        "/api/users",
        json={"username": "newbie", "role": "viewer", "password": "newbie-pass"},
        headers=h,
    )
    assert r.status_code == 201 and r.json()["privileges"] == ["view"]
    assert "password" not in str(r.json().keys()) or "must_change_password" in r.json()
    assert all("hash" not in k for k in r.json())
    assert (
        sqlite_client.post(
            "/api/users", json={"username": "x", "role": "viewer", "password": "short"}, headers=h
        ).status_code
        == 400
    )
    r = sqlite_client.patch("/api/users/newbie", json={"role": "radiologist"}, headers=h)
    assert "export" in r.json()["privileges"]
    r = sqlite_client.post(
        "/api/roles", json={"name": "auditor", "privileges": ["view", "export"]}, headers=h
    )
    assert r.status_code == 201
    sqlite_client.patch("/api/users/newbie", json={"role": "auditor"}, headers=h)
    me = sqlite_client.get("/api/me", headers=basic("newbie", "newbie-pass")).json()
    assert me["user"]["privileges"] == ["export", "view"] or set(me["user"]["privileges"]) == {
        "view",
        "export",
    }
    assert (
        sqlite_client.patch("/api/users/boss", json={"enabled": False}, headers=h).status_code
        == 400
    )
    assert sqlite_client.delete("/api/users/newbie", headers=h).status_code == 200
    assert sqlite_client.get("/api/users/newbie", headers=h).status_code == 404
    names = [u["username"] for u in sqlite_client.get("/api/users", headers=h).json()]
    assert names == ["boss", "tess"]


def test_settings_masked_health_metrics_openapi(
    sqlite_client: TestClient,
    sqlite_archive,  # noqa: ANN001
) -> None:
    h = basic(*ADMIN)
    settings = sqlite_client.get("/api/settings", headers=h).json()
    assert settings["metrics_token"] == "****" and settings["ae_title"] == "PACSBOX"
    assert "prom-secret-token" not in str(settings)
    # health
    assert sqlite_client.get("/health").json()["checks"] == {"database": "ok", "storage": "ok"}
    # metrics: admin, or the metrics token
    sqlite_client.get("/api/me", headers=h)
    r = sqlite_client.get("/metrics", headers=h)
    assert r.status_code == 200 and "pacsbox_http_requests_total" in r.text
    assert 'route="/api/me"' in r.text and "pacsbox_index_instances" in r.text
    r = sqlite_client.get("/metrics", headers={"Authorization": "Bearer prom-secret-token"})
    assert r.status_code == 200
    r = sqlite_client.get("/metrics", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    # OpenAPI behind authentication
    doc = sqlite_client.get("/api/openapi.json", headers=basic(*TECH)).json()
    assert "/api/studies/{study_uid}" in doc["paths"]
    assert "pacsbox API" in sqlite_client.get("/api/docs", headers=basic(*TECH)).text
    # storage gone (e.g. an unmounted disk): 503
    shutil.rmtree(sqlite_archive.store.root)
    r = sqlite_client.get("/health")
    assert r.status_code == 503 and r.json()["checks"]["storage"].startswith("error")


def test_patients_search_get_delete(client: TestClient, tmp_path: Path) -> None:
    a1 = write_study(tmp_path / "a1", 1, 2, patient_name="Smith^Anna", patient_id="P1")
    a2 = write_study(tmp_path / "a2", 2, 1, patient_name="Smith^Anna", patient_id="P1")
    b = write_study(tmp_path / "b", 1, 1, patient_name="Jones^Bob", patient_id="P2")
    assert upload(client, a1 + a2 + b)["stored"] == 5
    h = basic(*TECH)
    rows = client.get("/api/patients", params={"PatientName": "SMITH*"}, headers=h).json()
    assert [r["PatientID"] for r in rows] == ["P1"]
    assert rows[0]["NumberOfPatientRelatedStudies"] == 2
    assert rows[0]["NumberOfPatientRelatedInstances"] == 4
    assert len(client.get("/api/patients", headers=h).json()) == 2
    assert client.get("/api/patients", params={"Bogus": "x"}, headers=h).status_code == 400
    got = client.get("/api/patients/P1", headers=h).json()
    assert got["patients"][0]["num_studies"] == 2 and len(got["studies"]) == 2
    assert client.get("/api/patients/NOPE", headers=h).status_code == 404
    assert client.get("/api/patients/" + "x" * 65, headers=h).status_code == 400
    assert client.delete("/api/patients/P1", headers=h).status_code == 403  # no `delete`
    r = client.delete("/api/patients/P1", headers=basic(*ADMIN))
    assert r.status_code == 200, r.text
    assert r.json()["studies"] == 2 and r.json()["instances"] == 4
    assert client.get("/api/patients/P1", headers=h).status_code == 404
    assert [r["PatientID"] for r in client.get("/api/patients", headers=h).json()] == ["P2"]
    assert client.delete("/api/patients/P1", headers=basic(*ADMIN)).status_code == 404


def test_zip_export_includes_instances_imported_in_place(
    sqlite_client: TestClient,
    sqlite_archive,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    """Files indexed where they are (``pacsbox import --link``) are in the zip too."""
    paths = write_study(tmp_path / "linked", 1, 3)
    report = import_paths(sqlite_archive.ingest, paths, link=True)
    assert (report.stored, report.failed) == (3, [])
    study = dcmread(paths[0]).StudyInstanceUID
    r = sqlite_client.get(f"/api/studies/{study}/archive", headers=basic(*ADMIN))
    assert r.status_code == 200
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    members = [n for n in zf.namelist() if n != "DICOMDIR"]
    assert len(members) == 3
    assert {dcmread(io.BytesIO(zf.read(n))).SOPInstanceUID for n in members} == {
        dcmread(p).SOPInstanceUID for p in paths
    }
