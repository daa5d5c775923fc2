"""DICOMweb interoperability with Orthanc's DICOMweb plugin as the peer (PS3.18; SPEC E1).

``pacsbox serve`` (HTTP on a loopback port) and a private Orthanc (the harness of
test_orthanc_qr: own configuration, loopback ports, ``TCP_NODELAY=1``, started and stopped by
PID) with the ``orthanc-dicomweb`` plugin, where pacsbox is a DICOMweb server
(``DicomWeb.Servers``, HTTP Basic). Orthanc then acts as the DICOMweb client:

- QIDO-RS through ``/dicom-web/servers/pacsbox/get``;
- WADO-RS: ``/dicom-web/servers/pacsbox/retrieve`` pulls a study from pacsbox into Orthanc,
  checked down to the data set bytes of every instance;
- STOW-RS the other way: ``/dicom-web/servers/pacsbox/stow`` pushes a study Orthanc holds into
  pacsbox, checked the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydicom import dcmread

from tests.helpers import Server, dataset_bytes, free_port, server_env, write_study
from tests.interop.test_orthanc_qr import (
    ORTHANC_BIN,
    Orthanc,
    _require,
    assert_orthanc_holds,
    start_orthanc,
    stop_orthanc,
)

pytestmark = pytest.mark.interop

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "orthanc-peer", "orthanc-peer-pw-1"


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[tuple[Server, str, Orthanc]]:
    _require(ORTHANC_BIN)
    _require(PLUGIN)
    data = tmp_path / "srv" / "data"
    data.mkdir(parents=True)
    http_port = free_port()
    env = server_env(data, free_port(), None, PACSBOX_HTTP_PORT=str(http_port))
    server = Server(data, int(env["PACSBOX_DICOM_PORT"]), env)
    res = server.cli("user", "add", USER, "--role", "technician", "--password", PASSWORD)
    assert res.returncode == 0, res.stdout + res.stderr
    server.start()
    url = f"http://127.0.0.1:{http_port}"
    try:
        orthanc = start_orthanc(
            tmp_path / "orthanc",
            server,
            {
                "Plugins": [str(PLUGIN)],
                "DicomWeb": {
                    "Enable": True,
                    "Root": "/dicom-web/",
                    "EnableWado": False,
                    "Servers": {"pacsbox": [f"{url}/dicom-web/", USER, PASSWORD]},
                },
            },
        )
        try:
            yield server, url, orthanc
        finally:
            stop_orthanc(orthanc)
    finally:
        server.stop()


def _stow_to_pacsbox(url: str, files: list[Path]) -> None:
    boundary = "orthanc-test-boundary"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + p.read_bytes()
            + b"\r\n"
            for p in files
        )
        + f"--{boundary}--\r\n".encode()
    )
    r = requests.post(
        f"{url}/dicom-web/studies",
        data=body,
        auth=(USER, PASSWORD),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text


def test_orthanc_searches_and_retrieves_a_study_from_pacsbox(peers, tmp_path: Path) -> None:  # noqa: ANN001
    _server, url, orthanc = peers
    files = write_study(tmp_path / "in", n_series=2, per_series=3, patient_id="ORTH-DW")
    _stow_to_pacsbox(url, files)
    study = str(dcmread(files[0]).StudyInstanceUID)

    found = orthanc.rest(
        "POST",
        "/dicom-web/servers/pacsbox/get",
        {
            "Uri": "/studies",
            "Arguments": {"PatientID": "ORTH-DW", "includefield": "StudyDescription"},
        },
    )
    found = json.loads(found) if isinstance(found, bytes) else found
    assert [f["0020000D"]["Value"][0] for f in found] == [study]
    series = orthanc.rest(
        "POST", "/dicom-web/servers/pacsbox/get", {"Uri": f"/studies/{study}/series"}
    )
    series = json.loads(series) if isinstance(series, bytes) else series
    assert len(series) == 2

    orthanc.rest(
        "POST",
        "/dicom-web/servers/pacsbox/retrieve",
        {"Resources": [{"Study": study}], "Synchronous": True},
        timeout=120,
    )
    assert_orthanc_holds(orthanc, files)  # complete, every data set byte-identical


def test_orthanc_stores_a_study_into_pacsbox_with_stow(peers, tmp_path: Path) -> None:  # noqa: ANN001
    _server, url, orthanc = peers
    files = write_study(tmp_path / "in", n_series=1, per_series=4, patient_id="ORTH-STOW")
    for path in files:
        r = requests.post(
            f"http://127.0.0.1:{orthanc.http_port}/instances", data=path.read_bytes(), timeout=60
        )
        assert r.status_code == 200, r.text
    study = str(dcmread(files[0]).StudyInstanceUID)
    sid = orthanc.study_id(study)
    assert sid is not None
    orthanc.rest(
        "POST",
        "/dicom-web/servers/pacsbox/stow",
        {"Resources": [sid], "Synchronous": True},
        timeout=120,
    )
    auth = (USER, PASSWORD)
    found = requests.get(f"{url}/dicom-web/studies/{study}/instances", auth=auth, timeout=60).json()
    assert len(found) == 4
    for path in files:
        ds = dcmread(path)
        r = requests.get(
            f"{url}/dicom-web/studies/{study}/series/{ds.SeriesInstanceUID}/instances/"
            f"{ds.SOPInstanceUID}",
            auth=auth,
            headers={"Accept": "application/dicom; transfer-syntax=*"},
            timeout=60,
        )
        assert r.status_code == 200
        got = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        got.write_bytes(r.content)
        assert dataset_bytes(got) == dataset_bytes(path)
