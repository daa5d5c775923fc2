"""Audit events written by the archive services (SPEC R3, issue 4 item 2), seen through the
REST audit route of a real ``pacsbox serve``: a C-STORE association (one ``store`` event per
study, written when the association ends), a C-MOVE (``export`` with the destination), a
REST deletion (``delete``), a STOW-RS request and a REST upload (``store`` per study)."""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelMove

from tests.helpers import free_port, write_study

pytestmark = pytest.mark.xdist_group("web_audit")
ADMIN = ("auditboss", "Audit-pass-12")


def _auth() -> dict[str, str]:
    token = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _events(http: httpx.Client, want: int, **params: str) -> list[dict]:
    """The audit events matching ``params``, waiting (the DIMSE paths write at the end of
    the association, in the server's worker) until at least ``want`` are there."""
    deadline = time.monotonic() + 15
    while True:
        r = http.get("/api/audit", params=params, headers=_auth())
        assert r.status_code == 200, r.text
        if len(r.json()) >= want or time.monotonic() > deadline:
            return r.json()
        time.sleep(0.2)


def test_services_write_the_audit_events(make_server, tmp_path: Path) -> None:  # noqa: ANN001
    http_port = free_port()
    server = make_server(PACSBOX_HTTP_PORT=str(http_port))
    out = server.cli("user", "add", ADMIN[0], "--role", "admin", "--password", ADMIN[1])
    assert out.returncode == 0, out.stderr
    http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30)

    # a storage SCP of ours: the C-MOVE destination
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    dest_ae = AE("AUDITDEST")
    dest_ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    dest_port = free_port()
    dest = dest_ae.start_server(
        ("127.0.0.1", dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        for title, port in (("AUDITSCU", 11112), ("AUDITDEST", dest_port)):
            r = http.post(
                "/api/aes",
                json={"ae_title": title, "host": "127.0.0.1", "port": port},
                headers=_auth(),
            )
            assert r.status_code == 201, r.text

        # C-STORE: two studies over one association -> one event per study
        first = write_study(tmp_path / "a", n_series=1, per_series=3)
        second = write_study(tmp_path / "b", n_series=1, per_series=2, patient_id="PAT002")
        scu = AE("AUDITSCU")
        scu.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        scu.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = scu.associate("127.0.0.1", server.port, ae_title=server.ae_title)
        assert assoc.is_established
        for path in first + second:
            assert assoc.send_c_store(dcmread(path)).Status == 0
        assoc.release()
        study_a = str(dcmread(first[0]).StudyInstanceUID)
        study_b = str(dcmread(second[0]).StudyInstanceUID)
        stores = _events(http, 2, action="store", user="AE:AUDITSCU")
        by_study = {e["study_uid"]: e for e in stores}
        assert set(by_study) == {study_a, study_b}, stores
        assert "C-STORE: 3 instance(s) (3 new" in by_study[study_a]["detail"]
        assert "C-STORE: 2 instance(s) (2 new" in by_study[study_b]["detail"]
        assert by_study[study_a]["client"] == "127.0.0.1"
        # (that association also proposed Q/R, so pynetdicom served it; a storage-only one
        # goes to the lean acceptor: same events)
        lean = AE("AUDITSCU")
        lean.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        assoc = lean.associate("127.0.0.1", server.port, ae_title=server.ae_title)
        assert assoc.is_established
        assert assoc.send_c_store(dcmread(first[0])).Status == 0
        assoc.release()
        stores = _events(http, 3, action="store", user="AE:AUDITSCU")
        assert len(stores) == 3 and stores[0]["study_uid"] == study_a  # newest first
        assert "C-STORE: 1 instance(s) (0 new, 1 replaced" in stores[0]["detail"]

        # C-MOVE of study A to our SCP -> one export event naming the destination
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = study_a
        assoc = scu.associate("127.0.0.1", server.port, ae_title=server.ae_title)
        assert assoc.is_established
        statuses = [
            s.Status
            for s, _ in assoc.send_c_move(
                ident, "AUDITDEST", StudyRootQueryRetrieveInformationModelMove
            )
            if s
        ]
        assoc.release()
        assert statuses[-1] == 0 and len(received) == 3
        exports = _events(http, 1, action="export", user="AE:AUDITSCU")
        assert [(e["study_uid"], e["object"]) for e in exports] == [(study_a, "AUDITDEST")]
        assert "C-MOVE to AUDITDEST" in exports[0]["detail"]
        assert "3 completed" in exports[0]["detail"]

        # deletion through REST -> the deletion service's event, with the user
        r = http.delete(f"/api/studies/{study_b}", headers=_auth())
        assert r.status_code == 200, r.text
        deletes = _events(http, 1, action="delete")
        assert [(e["study_uid"], e["username"]) for e in deletes] == [(study_b, ADMIN[0])]
        assert "2 instance(s)" in deletes[0]["detail"]

        # STOW-RS of a new study: one store event for the request
        stow = write_study(tmp_path / "c", n_series=2, per_series=2, patient_id="PAT003")
        boundary = uuid.uuid4().hex
        body = (
            b"".join(
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + p.read_bytes()
                + b"\r\n"
                for p in stow
            )
            + f"--{boundary}--\r\n".encode()
        )
        r = http.post(
            "/dicom-web/studies",
            content=body,
            headers={
                **_auth(),
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
        )
        assert r.status_code == 200, r.text
        study_c = str(dcmread(stow[0]).StudyInstanceUID)
        stows = _events(http, 1, action="store", user=ADMIN[0])
        assert [(e["study_uid"], e["outcome"]) for e in stows] == [(study_c, "success")]
        assert stows[0]["detail"].startswith("STOW-RS: 4 instance(s)")

        # REST upload with one good and one bad file: a success and a failure event
        good = write_study(tmp_path / "d", n_series=1, per_series=1, patient_id="PAT004")[0]
        files = [
            ("file", (good.name, good.read_bytes(), "application/dicom")),
            ("file", ("junk.dcm", b"not dicom at all", "application/dicom")),
        ]
        r = http.post("/api/instances", files=files, headers=_auth())
        assert r.status_code == 202, r.text
        uploads = _events(http, 3, action="store", user=ADMIN[0])
        details = sorted((e["outcome"], e["detail"].split(":")[0]) for e in uploads)
        assert details == [
            ("failure", "HTTP upload"),
            ("success", "HTTP upload"),
            ("success", "STOW-RS"),
        ], uploads
    finally:
        dest.shutdown()
        http.close()
