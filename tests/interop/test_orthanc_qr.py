"""Query/Retrieve interoperability with Orthanc (PS3.4 Annex C: C-FIND, C-MOVE).

Each test starts ``pacsbox serve`` and a private Orthanc (own JSON configuration in the test's
temporary directory, loopback DICOM and HTTP ports, its own storage and SQLite index,
``TCP_NODELAY=1``; started and stopped by PID). pacsbox is a modality in Orthanc's
``DicomModalities``; Orthanc is registered in pacsbox's AE registry (``pacsbox ae add``) as a
move destination. Orthanc then acts as the Q/R SCU through its REST API
(``/modalities/pacsbox/query``, ``/queries/{id}/retrieve``), and DCMTK ``movescu`` asks
pacsbox to C-MOVE a study to Orthanc. What arrived is checked through Orthanc's REST API,
down to the data set bytes of every instance.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.helpers import (
    Server,
    dataset_bytes,
    dcmtk_env,
    free_port,
    run_dcmtk,
    write_study,
)

pytestmark = pytest.mark.interop

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _require(path: Path) -> None:
    if not path.exists():
        if IN_CI:
            pytest.fail(f"{path} is required in CI")
        pytest.skip(f"{path} not installed")


@dataclass
class Orthanc:
    """A private Orthanc process (stopped by PID)."""

    proc: subprocess.Popen[bytes]
    dicom_port: int
    http_port: int
    aet: str
    log: Path

    def rest(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        data = None
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (loopback)
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(
                f"Orthanc {method} {path} -> {exc.code}: {exc.read()[:2000]!r}\n"
                f"log: {self.log.read_text(errors='replace')[-3000:]}"
            ) from exc
        ctype = resp.headers.get("Content-Type", "")
        return json.loads(raw) if "json" in ctype else raw

    def study_id(self, study_uid: str) -> str | None:
        found = self.rest("POST", "/tools/lookup", study_uid)
        ids = [f["ID"] for f in found if f["Type"] == "Study"]
        return ids[0] if ids else None


def start_orthanc(tmp: Path, pacsbox: Server, extra: dict[str, Any] | None = None) -> Orthanc:
    """A private Orthanc with pacsbox as a DICOM modality; ``extra`` adds/overrides
    configuration keys (plugins, DICOMweb servers)."""
    dicom_port, http_port = free_port(), free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "pacsbox-interop",
        "StorageDirectory": str(tmp / "storage"),
        "IndexDirectory": str(tmp / "index"),
        "StorageCompression": False,
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomScuTimeout": 30,
        "SaveJobs": False,
        "DicomModalities": {"pacsbox": [pacsbox.ae_title, "127.0.0.1", pacsbox.port]},
    }
    config.update(extra or {})
    path = tmp / "orthanc.json"
    path.write_text(json.dumps(config, indent=1))
    log = tmp / "orthanc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(ORTHANC_BIN), str(path)],
            env=dcmtk_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    orthanc = Orthanc(proc, dicom_port, http_port, "ORTHANC", log)
    deadline = time.monotonic() + 60  # the Debian package can take a while to start
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {log.read_text(errors='replace')[-3000:]}")
        try:
            orthanc.rest("GET", "/system", timeout=2)
            return orthanc
        except (OSError, AssertionError):
            time.sleep(0.2)
    stop_orthanc(orthanc)
    raise RuntimeError(f"Orthanc did not answer /system: {log.read_text(errors='replace')}")


def stop_orthanc(orthanc: Orthanc) -> None:
    if orthanc.proc.poll() is None:
        orthanc.proc.send_signal(signal.SIGTERM)
        try:
            orthanc.proc.wait(20)
        except subprocess.TimeoutExpired:
            orthanc.proc.kill()
            orthanc.proc.wait(10)


@pytest.fixture
def peers(make_server, tmp_path: Path) -> Iterator[tuple[Server, Orthanc]]:
    """pacsbox (SQLite) and Orthanc, each registered as the other's peer."""
    _require(ORTHANC_BIN)
    for tool in ("storescu", "movescu"):
        _require(Path("/usr/bin") / tool)
    server = make_server(PACSBOX_PERMISSIVE_AES="true", PACSBOX_PERMISSIVE_AES_ENABLED="true")
    orthanc = start_orthanc(tmp_path / "orthanc", server)
    try:
        res = server.cli(
            "ae", "add", "ORTHANC", "--host", "127.0.0.1", "--port", str(orthanc.dicom_port)
        )
        assert res.returncode == 0, res.stdout + res.stderr
        yield server, orthanc
    finally:
        stop_orthanc(orthanc)


def store_in_pacsbox(server: Server, folder: Path, **kw: Any) -> list[Path]:
    """A generated study (2 series x 3 instances) stored into pacsbox with storescu."""
    files = write_study(folder, n_series=2, per_series=3, **kw)
    res = run_dcmtk(
        [
            "/usr/bin/storescu",
            "-aet",
            "STORESCU",
            "-aec",
            server.ae_title,
            "127.0.0.1",
            str(server.port),
            *map(str, files),
        ]
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return files


def assert_orthanc_holds(orthanc: Orthanc, files: list[Path]) -> None:
    """Orthanc has exactly these instances, and each data set is byte-identical."""
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    sid = orthanc.study_id(study_uid)
    assert sid is not None, f"study {study_uid} not in Orthanc"
    instances = orthanc.rest("GET", f"/studies/{sid}/instances")
    by_uid = {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in instances}
    want = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    assert set(by_uid) == set(want)
    for uid, path in want.items():
        raw = orthanc.rest("GET", f"/instances/{by_uid[uid]}/file")
        got = Path(orthanc.log.parent / f"{uid}.dcm")
        got.write_bytes(raw)
        assert dataset_bytes(got) == dataset_bytes(path), f"{uid}: data set bytes differ"


def test_orthanc_finds_and_retrieves_a_study_from_pacsbox(peers, tmp_path: Path) -> None:
    server, orthanc = peers
    pid = f"ORQR{generate_uid()[-8:]}"
    files = store_in_pacsbox(server, tmp_path / "study", patient_id=pid, patient_name="Orth^Anc")
    other = store_in_pacsbox(server, tmp_path / "other", patient_id=pid + "X")
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    query = orthanc.rest(
        "POST",
        "/modalities/pacsbox/query",
        {
            "Level": "Study",
            "Query": {
                "PatientID": pid,
                "StudyInstanceUID": "",
                "PatientName": "",
                "NumberOfStudyRelatedInstances": "",
            },
        },
    )
    answers = orthanc.rest("GET", f"/queries/{query['ID']}/answers?expand&simplify")
    assert [a["StudyInstanceUID"] for a in answers] == [study_uid]
    assert answers[0]["PatientName"] == "Orth^Anc"
    assert answers[0]["NumberOfStudyRelatedInstances"] == "6"

    orthanc.rest("POST", f"/queries/{query['ID']}/retrieve", orthanc.aet, timeout=120)
    assert_orthanc_holds(orthanc, files)
    other_uid = str(dcmread(other[0], stop_before_pixels=True).StudyInstanceUID)
    assert orthanc.study_id(other_uid) is None  # only the matched study was moved


def test_pacsbox_moves_a_study_to_orthanc(peers, tmp_path: Path) -> None:
    server, orthanc = peers
    files = store_in_pacsbox(server, tmp_path / "study", patient_id="MOVE2ORTHANC")
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    res = run_dcmtk(
        [
            "/usr/bin/movescu",
            "-S",
            "-aet",
            "MOVESCU",
            "-aec",
            server.ae_title,
            "-aem",
            orthanc.aet,
            "127.0.0.1",
            str(server.port),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study_uid}",
        ]
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert_orthanc_holds(orthanc, files)


def test_orthanc_series_level_query_on_pacsbox(peers, tmp_path: Path) -> None:
    server, orthanc = peers
    files = store_in_pacsbox(server, tmp_path / "study", patient_id="SERIESQ")
    first = dcmread(files[0], stop_before_pixels=True)
    series_uids = {str(dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in files}

    query = orthanc.rest(
        "POST",
        "/modalities/pacsbox/query",
        {
            "Level": "Series",
            "Query": {
                "StudyInstanceUID": str(first.StudyInstanceUID),
                "SeriesInstanceUID": "",
                "Modality": "CT",
                "SeriesNumber": "",
                "NumberOfSeriesRelatedInstances": "",
            },
        },
    )
    answers = orthanc.rest("GET", f"/queries/{query['ID']}/answers?expand&simplify")
    assert {a["SeriesInstanceUID"] for a in answers} == series_uids
    assert sorted(a["SeriesNumber"] for a in answers) == ["1", "2"]
    assert {a["NumberOfSeriesRelatedInstances"] for a in answers} == {"3"}

    # a series-level key that matches nothing gives no answer
    query = orthanc.rest(
        "POST",
        "/modalities/pacsbox/query",
        {
            "Level": "Series",
            "Query": {"StudyInstanceUID": str(first.StudyInstanceUID), "Modality": "MR"},
        },
    )
    assert orthanc.rest("GET", f"/queries/{query['ID']}/answers") == []
