"""sendtopacs worklist search against real peers (SPEC S2, issue 5 "How it must be shown").

* DCMTK ``wlmscpfs`` (Modality Worklist SCP): the test writes the ``.wl`` files (pydicom) into
  a temporary worklist folder ``<dir>/WLSCP/`` (with its ``lockfile``), runs
  ``wlmscpfs -dfp <dir> <port>`` with ``TCP_NODELAY=1`` and searches by modality, scheduled
  station AE, date (today / range), patient ID, patient name with wildcards and UTF-8 names.
* pacsbox (``pacsbox serve``) and Orthanc as Q/R C-FIND SCPs: Study Root at STUDY level,
  Patient Root at PATIENT and STUDY level, PATIENT_STUDY.
* An HTTP JSON worklist (the test's own server, see tests/unit/test_sendtopacs_naming.py).
* End to end through the ``sendtopacs`` command: a JPEG named by the file-name pattern is
  auto-mapped to its unique worklist entry, converted and sent to DCMTK ``storescp``; the
  object that arrives carries the worklist's patient, accession number and Study Instance UID.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacsbox.sendtopacs.worklist import (
    WorklistConfigError,
    WorklistDevice,
    WorklistError,
    WorklistQuery,
    echo,
    search,
)
from tests.helpers import dcmtk_env, free_port, run_dcmtk, write_study
from tests.interop.test_orthanc_qr import ORTHANC_BIN, start_orthanc, stop_orthanc
from tests.interop.test_sendtopacs import (
    _listening,
    _require,
    add_device,
    start_storescp,  # noqa: F401 - a fixture used by name below
    stp,
)
from tests.unit.test_sendtopacs_naming import JsonWorklist

pytestmark = pytest.mark.interop

WLMSCPFS = Path("/usr/bin/wlmscpfs")
TODAY = dt.date.today().strftime("%Y%m%d")
TOMORROW = (dt.date.today() + dt.timedelta(days=1)).strftime("%Y%m%d")


def wl_file(
    path: Path,
    pid: str,
    name: str,
    modality: str,
    station: str,
    date: str,
    accession: str,
    study_uid: str = "",
) -> None:
    """One worklist item (PS3.4 Table K.6-1 attributes) as a DICOM file for wlmscpfs."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.31"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.AccessionNumber = accession
    ds.PatientName = name
    ds.PatientID = pid
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.ReferringPhysicianName = "Ref^Doc"
    ds.RequestedProcedureID = f"RP{pid}"
    ds.RequestedProcedureDescription = f"{modality} photo of {pid}"
    sps = Dataset()
    sps.Modality = modality
    sps.ScheduledStationAETitle = station
    sps.ScheduledProcedureStepStartDate = date
    sps.ScheduledProcedureStepStartTime = "080000"
    sps.ScheduledPerformingPhysicianName = "Perf^Doc"
    sps.ScheduledProcedureStepDescription = "photo"
    sps.ScheduledProcedureStepID = f"SPS{pid}"
    sps.ScheduledStationName = station
    ds.ScheduledProcedureStepSequence = [sps]
    ds.save_as(path, enforce_file_format=True)


@dataclass
class WlmScp:
    proc: subprocess.Popen[bytes]
    port: int
    folder: Path
    log: Path
    study_uid: str

    def device(self, **kw: object) -> WorklistDevice:
        values: dict[str, object] = {"timeout": 10, **kw}
        return WorklistDevice("wl", "mwl", "WLSCP", "127.0.0.1", self.port, **values)  # type: ignore[arg-type]


def _start_wlmscpfs(tmp_path: Path, *options: str) -> WlmScp:
    _require(WLMSCPFS)
    root = tmp_path / "worklists"
    folder = root / "WLSCP"
    folder.mkdir(parents=True)
    (folder / "lockfile").write_bytes(b"")
    study_uid = generate_uid()
    wl_file(folder / "a.wl", "WL001", "Muster^Anna", "XC", "CAMERA1", TODAY, "ACC100", study_uid)
    wl_file(folder / "b.wl", "WL002", "Muster^Bernd", "XC", "CAMERA2", TODAY, "ACC200")
    wl_file(folder / "c.wl", "WL003", "Other^Carl", "ES", "ENDO1", TOMORROW, "ACC300")
    wl_file(folder / "d.wl", "WL004", "Müller^Jörg", "XC", "CAMERA1", TODAY, "ACC400")
    port = free_port()
    log = tmp_path / "wlmscpfs.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(WLMSCPFS), "-v", "-dfp", str(root), "-csk", *options, str(port)],
            env=dcmtk_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    scp = WlmScp(proc, port, root, log, study_uid)
    deadline = time.monotonic() + 10
    while not _listening(port):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"wlmscpfs did not listen: {log.read_text()}")
        time.sleep(0.05)
    return scp


def _stop(scp: WlmScp) -> None:
    if scp.proc.poll() is None:
        scp.proc.terminate()
        try:
            scp.proc.wait(10)
        except subprocess.TimeoutExpired:
            scp.proc.kill()
            scp.proc.wait(5)


@pytest.fixture
def wlmscp(tmp_path: Path) -> Iterator[WlmScp]:
    scp = _start_wlmscpfs(tmp_path)
    yield scp
    _stop(scp)


def _ids(entries: list) -> list[str]:
    return sorted(e.patient.patient_id for e in entries)


# -- MWL ---------------------------------------------------------------------------------------
def test_mwl_search_by_modality_station_and_date(wlmscp: WlmScp) -> None:
    dev = wlmscp.device()
    found = search(dev, WorklistQuery(modality="XC", date="today"))
    assert _ids(found) == ["WL001", "WL002", "WL004"]
    assert _ids(search(dev, WorklistQuery(modality="XC", station_ae="CAMERA1"))) == [
        "WL001",
        "WL004",
    ]
    assert _ids(search(dev, WorklistQuery(modality="ES", date="today"))) == []
    assert _ids(search(dev, WorklistQuery(date=f"{TODAY}-{TOMORROW}", modality="ES"))) == ["WL003"]
    assert _ids(search(dev, WorklistQuery(date=f"-{TODAY}"))) == ["WL001", "WL002", "WL004"]


def test_mwl_entry_carries_patient_order_and_step(wlmscp: WlmScp) -> None:
    (entry,) = search(wlmscp.device(), WorklistQuery(patient_id="WL001"))
    p = entry.patient
    assert (p.patient_id, p.patient_name, p.birth_date, p.sex) == (
        "WL001",
        "Muster^Anna",
        "19800101",
        "F",
    )
    assert p.accession_number == "ACC100"
    assert p.study_instance_uid == wlmscp.study_uid  # assigned by the RIS
    assert p.study_description == "XC photo of WL001"
    assert p.referring_physician == "Ref^Doc"
    assert (entry.modality, entry.scheduled_station_ae, entry.sps_start_date) == (
        "XC",
        "CAMERA1",
        TODAY,
    )
    assert (entry.sps_id, entry.requested_procedure_id) == ("SPSWL001", "RPWL001")
    assert entry.problem == ""


def test_mwl_names_wildcards_and_utf8(wlmscp: WlmScp) -> None:
    dev = wlmscp.device()
    assert _ids(search(dev, WorklistQuery(patient_name="Muster*"))) == ["WL001", "WL002"]
    assert _ids(search(dev, WorklistQuery(patient_name="Muster^B?rnd"))) == ["WL002"]
    # wlmscpfs matches Patient ID by single value only (PS3.4 §K.6.1.2.2 does not require
    # wildcards there); "*" for the date means "any" even when the device had a default
    assert _ids(search(dev, WorklistQuery(patient_id="WL003", modality="ES", date="*"))) == [
        "WL003"
    ]
    (jorg,) = search(dev, WorklistQuery(patient_name="Müller*"))
    assert jorg.patient.patient_name == "Müller^Jörg"


def test_mwl_device_defaults_and_star_override(wlmscp: WlmScp) -> None:
    dev = wlmscp.device(modality="ES", date="")
    assert _ids(search(dev, WorklistQuery())) == ["WL003"]
    assert _ids(search(dev, WorklistQuery(modality="*"))) == [
        "WL001",
        "WL002",
        "WL003",
        "WL004",
    ]
    dev = wlmscp.device(date="today", station_ae="CAMERA2")
    assert _ids(search(dev, WorklistQuery())) == ["WL002"]


def test_mwl_errors_are_clear(wlmscp: WlmScp) -> None:
    bad_ae = WorklistDevice("wl", "mwl", "NOSUCHAE", "127.0.0.1", wlmscp.port, timeout=10)
    with pytest.raises(WorklistError, match="association rejected .*Called AE title not"):
        search(bad_ae, WorklistQuery())
    down = WorklistDevice("wl", "mwl", "WLSCP", "127.0.0.1", free_port(), timeout=5)
    with pytest.raises(WorklistError, match="connection refused"):
        search(down, WorklistQuery())
    few = wlmscp.device(max_results=2)
    with pytest.raises(WorklistError, match="more than 2 matches"):
        search(few, WorklistQuery())
    assert echo(wlmscp.device()) == (True, f"C-ECHO WLSCP@127.0.0.1:{wlmscp.port}: success")


def test_mwl_failure_status_is_reported(wlmscp: WlmScp) -> None:
    """The peer's failure status and Error Comment reach the user (an identifier that
    wlmscpfs refuses: two items in the SPS sequence — search() never sends one)."""
    from pacsbox.sendtopacs.worklist import MWL_FIND, _Finder, mwl_identifier

    dev = wlmscp.device()
    ident = mwl_identifier(WorklistQuery(), dev)
    ident.ScheduledProcedureStepSequence.append(Dataset())
    finder = _Finder(dev, "SENDTOPACS", MWL_FIND)
    try:
        with pytest.raises(WorklistError, match=r"status A900 .*\(More than 1 item in sequence"):
            list(finder.find(ident))
    finally:
        finder.close()
    # what a user can type is checked before anything goes on the wire
    with pytest.raises(WorklistConfigError, match="longer than 16"):
        search(dev, WorklistQuery(station_ae="X" * 17))


def test_mwl_time_out_is_reported(tmp_path: Path) -> None:
    scp = _start_wlmscpfs(tmp_path, "--sleep-before", "4")  # answers after 4 s
    try:
        slow = scp.device(timeout=1)
        t0 = time.monotonic()
        with pytest.raises(WorklistError, match=r"no C-FIND response .*\(time-out after 1 s"):
            search(slow, WorklistQuery())
        assert time.monotonic() - t0 < 4
    finally:
        _stop(scp)


ORTHANC_MWL_PLUGIN = Path("/usr/share/orthanc/plugins/libModalityWorklists.so")


def test_mwl_search_in_orthanc(tmp_path: Path) -> None:
    """Orthanc's Modality Worklists plugin serving the same kind of worklist files."""
    _require(ORTHANC_BIN)
    _require(ORTHANC_MWL_PLUGIN)
    folder = tmp_path / "orthanc-wl"
    folder.mkdir()
    study_uid = generate_uid()
    wl_file(folder / "a.wl", "WL001", "Muster^Anna", "XC", "CAMERA1", TODAY, "ACC100", study_uid)
    wl_file(folder / "b.wl", "WL002", "Muster^Bernd", "XC", "CAMERA2", TODAY, "ACC200")
    wl_file(folder / "c.wl", "WL003", "Other^Carl", "ES", "ENDO1", TOMORROW, "ACC300")
    orthanc = start_orthanc(
        tmp_path / "orthanc",
        SimpleNamespace(ae_title="NOBODY", port=1),  # type: ignore[arg-type]
        {
            "Plugins": [str(ORTHANC_MWL_PLUGIN)],
            "Worklists": {"Enable": True, "Database": str(folder)},
            "DicomModalities": {"stp": ["SENDTOPACS", "127.0.0.1", 104]},
        },
    )
    try:
        dev = WorklistDevice("owl", "mwl", orthanc.aet, "127.0.0.1", orthanc.dicom_port, timeout=10)
        assert _ids(search(dev, WorklistQuery(modality="XC", date="today"))) == ["WL001", "WL002"]
        assert _ids(search(dev, WorklistQuery(station_ae="CAMERA2"))) == ["WL002"]
        assert _ids(search(dev, WorklistQuery(patient_name="Other*", date=f"-{TOMORROW}"))) == [
            "WL003"
        ]
        (anna,) = search(dev, WorklistQuery(patient_id="WL001"))
        assert (anna.patient.patient_name, anna.patient.accession_number) == (
            "Muster^Anna",
            "ACC100",
        )
        assert anna.patient.study_instance_uid == study_uid
        assert (anna.modality, anna.sps_id, anna.requested_procedure_id) == (
            "XC",
            "SPSWL001",
            "RPWL001",
        )
    finally:
        stop_orthanc(orthanc)


# -- Q/R C-FIND: pacsbox and Orthanc -------------------------------------------------------------
def _store(port: int, aec: str, files: list[Path]) -> None:
    res = run_dcmtk(["/usr/bin/storescu", "-aec", aec, "127.0.0.1", str(port), *map(str, files)])
    assert res.returncode == 0, res.stdout + res.stderr


def _qr_checks(aet: str, port: int, files_a: list[Path], files_b: list[Path]) -> None:
    study_a = str(dcmread(files_a[0]).StudyInstanceUID)
    study_b = str(dcmread(files_b[0]).StudyInstanceUID)

    def dev(root: str, level: str = "STUDY") -> WorklistDevice:
        return WorklistDevice("qr", "qr", aet, "127.0.0.1", port, root_model=root, level=level)

    (st,) = search(dev("STUDY"), WorklistQuery(patient_id="QRA1"))
    p = st.patient
    assert (p.study_instance_uid, p.patient_name, p.study_date, p.accession_number) == (
        study_a,
        "Alpha^Anna",
        "20260101",
        "ACC1",
    )
    assert st.modality == "CT"
    both = search(dev("STUDY"), WorklistQuery(patient_name="*a^*"))
    assert sorted(e.patient.study_instance_uid for e in both) == sorted([study_a, study_b])
    assert search(dev("STUDY"), WorklistQuery(date="20250101")) == []

    (pat,) = search(dev("PATIENT", "PATIENT"), WorklistQuery(patient_name="Beta*"))
    assert (pat.patient.patient_id, pat.patient.birth_date, pat.patient.study_instance_uid) == (
        "QRB2",
        "19700101",
        "",
    )
    (ps,) = search(dev("PATIENT_STUDY"), WorklistQuery(patient_name="Beta*"))
    assert (ps.patient.patient_id, ps.patient.study_instance_uid) == ("QRB2", study_b)
    assert ps.patient.patient_name == "Beta^Bob" and ps.patient.birth_date == "19700101"
    (pr,) = search(dev("PATIENT", "STUDY"), WorklistQuery(patient_id="QRA1"))
    assert pr.patient.study_instance_uid == study_a


@pytest.fixture
def two_studies(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    a = write_study(
        tmp_path / "a", n_series=1, per_series=2, patient_id="QRA1", patient_name="Alpha^Anna"
    )
    b = write_study(
        tmp_path / "b", n_series=1, per_series=1, patient_id="QRB2", patient_name="Beta^Bob"
    )
    return a, b


def test_qr_search_in_pacsbox(make_server, two_studies) -> None:
    server = make_server(PACSBOX_PERMISSIVE_AES="true", PACSBOX_PERMISSIVE_AES_ENABLED="true")
    a, b = two_studies
    _store(server.port, server.ae_title, a + b)
    _qr_checks(server.ae_title, server.port, a, b)


def test_qr_search_in_orthanc(tmp_path: Path, two_studies) -> None:
    _require(ORTHANC_BIN)
    dummy = SimpleNamespace(ae_title="NOBODY", port=1)  # Orthanc's helper names one modality
    orthanc = start_orthanc(
        tmp_path / "orthanc",
        dummy,  # type: ignore[arg-type]
        {"DicomModalities": {"stp": ["SENDTOPACS", "127.0.0.1", 104]}},
    )
    try:
        a, b = two_studies
        _store(orthanc.dicom_port, orthanc.aet, a + b)
        _qr_checks(orthanc.aet, orthanc.dicom_port, a, b)
    finally:
        stop_orthanc(orthanc)


# -- HTTP JSON worklist --------------------------------------------------------------------------
def test_http_worklist_search_and_errors() -> None:
    with JsonWorklist() as his:
        dev = his.device()
        found = search(dev, WorklistQuery(patient_name="Muster*"))
        assert [e.patient.patient_id for e in found] == ["WL001", "WL002"]
        assert his.requests[-1] == "/orders?pid=&name=Muster%2A&acc="
        (anna,) = search(dev, WorklistQuery(patient_id="WL001"))
        assert (anna.patient.patient_name, anna.patient.birth_date) == ("Muster^Anna", "19800101")
        assert echo(dev)[0] is True
        with pytest.raises(WorklistError, match="HTTP 401"):
            search(his.device(auth_header="Authorization: nope"), WorklistQuery())
    with pytest.raises(WorklistError, match="connection refused"):
        search(dev, WorklistQuery())


# -- end to end: file name → worklist → convert → storescp --------------------------------------
def test_filename_pattern_maps_and_sends(
    wlmscp: WlmScp,
    start_storescp,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    from PIL import Image

    scp = start_storescp("+xa")  # accept JPEG Baseline as it is
    config = tmp_path / "stp.json"
    add_device(config, "scp", scp.port)
    res = stp(
        config,
        "worklist-devices",
        "add",
        "wl",
        "--kind",
        "mwl",
        "--aec",
        "WLSCP",
        "--host",
        "127.0.0.1",
        "--port",
        str(wlmscp.port),
        "--date",
        "today",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    yy, xx = np.indices((48, 64))
    rgb = np.stack([xx * 4 % 256, yy * 5 % 256, (xx + yy) % 256], -1).astype(np.uint8)
    photo = tmp_path / "WL001_Muster_1.jpg"
    Image.fromarray(rgb).save(photo, quality=90)
    res = stp(
        config,
        "send",
        str(photo),
        "--to",
        "scp",
        "--worklist",
        "wl",
        "--from-filename",
        "{PatientID}_{LastName}_*.jpg",
        "--json",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["sent"] == 1
    (received,) = scp.received()
    ds = dcmread(received)
    assert (ds.PatientID, str(ds.PatientName), ds.AccessionNumber) == (
        "WL001",
        "Muster^Anna",
        "ACC100",
    )
    assert ds.StudyInstanceUID == wlmscp.study_uid
    assert ds.Modality == "XC"
    assert ds.PatientBirthDate == "19800101"
    assert ds.StudyDescription == "XC photo of WL001"
    # the JPEG stream went in unchanged (no re-encoding on the way)
    assert photo.read_bytes() in bytes(ds.PixelData)
    from tests.unit.test_sendtopacs_convert import dciodvfy_errors

    assert dciodvfy_errors(received) == []  # still a valid SC object with the worklist data

    # a name with two matches is not guessed: nothing is sent, the candidates are listed
    other = tmp_path / "_Muster_2.jpg"
    Image.fromarray(rgb).save(other, quality=90)
    res = stp(
        config,
        "send",
        str(other),
        "--to",
        "scp",
        "--worklist",
        "wl",
        "--from-filename",
        "re:(?P<PatientID>[^_]*)_(?P<LastName>[^_]+)_.*",
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "2 worklist entries match" in res.stdout + res.stderr
    assert "WL001" in res.stdout and "WL002" in res.stdout
    assert len(scp.received()) == 1


def test_cli_search_replace_worklist_info_tag_updates_worklist_only(
    wlmscp: WlmScp,
    start_storescp,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    from PIL import Image

    from tests.helpers import make_ct

    scp = start_storescp("+xa")
    config = tmp_path / "stp.json"
    add_device(config, "scp", scp.port)
    args = ["--kind", "mwl", "--aec", "WLSCP", "--host", "127.0.0.1", "--port", str(wlmscp.port)]
    res = stp(config, "worklist-devices", "add", "wl", *args)
    assert res.returncode == 0, res.stdout + res.stderr

    res = stp(config, "worklist", "--modality", "XC", "--date", "today", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    found = json.loads(res.stdout)
    assert sorted(e["patient"]["patient_id"] for e in found) == ["WL001", "WL002", "WL004"]
    assert {e["patient"]["patient_name"] for e in found} >= {"Müller^Jörg"}

    # a DICOM file re-mapped to a worklist entry, then changed by tag update patterns
    ct = make_ct(patient_id="MOD7", patient_name="Modality^Guess")
    ct.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    res = stp(
        config,
        "send",
        str(tmp_path / "ct.dcm"),
        "--to",
        "scp",
        "--worklist",
        "wl",
        "--search",
        "patient_id=WL002",
        "--replace-worklist-info",
        "--tag-update",
        "StudyDescription={Modality} - test",
        "--tag-update",
        "InstitutionName=Clinic",
        "--create",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (got,) = [dcmread(p) for p in scp.received()]
    assert (got.PatientID, str(got.PatientName), got.AccessionNumber) == (
        "WL002",
        "Muster^Bernd",
        "ACC200",
    )
    assert got.SOPInstanceUID == ct.SOPInstanceUID  # UIDs kept (the file has its own study)
    assert got.StudyInstanceUID != ct.StudyInstanceUID  # ... but the RIS assigned one
    assert got.StudyDescription == "CT - test"
    assert got.InstitutionName == "Clinic"
    assert got.RequestAttributesSequence[0].RequestedProcedureID == "RPWL002"

    # an invalid tag update is refused before anything is sent
    res = stp(
        config, "send", str(tmp_path / "ct.dcm"), "--to", "scp", "--tag-update", "Modality=ct"
    )
    assert res.returncode == 2 and "Invalid value for VR CS" in res.stdout + res.stderr
    assert len(scp.received()) == 1

    # convert with a worklist search: the entry's patient and modality, plus a created tag
    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    res = stp(
        config,
        "convert",
        str(photo),
        "-o",
        str(tmp_path / "out"),
        "--worklist",
        "wl",
        "--search",
        "name=Müller*",
        "--tag-update",
        "SeriesDescription=from {StationName}",
        "--create",
        "--json",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (row,) = json.loads(res.stdout)["files"]
    made = dcmread(row["output"])
    from tests.unit.test_sendtopacs_convert import dciodvfy_errors

    assert dciodvfy_errors(Path(row["output"])) == []
    assert (made.PatientID, str(made.PatientName), made.Modality) == ("WL004", "Müller^Jörg", "XC")
    assert made.SeriesDescription == "from"  # no Station Name in the object: empty

    # several matches: nothing converted, candidates listed
    res = stp(
        config, "convert", str(photo), "-o", str(tmp_path / "o2"), "--worklist", "wl",
        "--search", "name=Muster*",
    )  # fmt: skip
    assert res.returncode == 1
    assert "2 worklist entries match" in res.stdout and "WL001" in res.stdout
    # ... unless one is picked by its number in that list
    res = stp(config, "worklist", "--patient-name", "Muster*", "--json")
    order = [e["patient"]["patient_id"] for e in json.loads(res.stdout)]
    assert sorted(order) == ["WL001", "WL002"]
    res = stp(
        config, "convert", str(photo), "-o", str(tmp_path / "o3"), "--worklist", "wl",
        "--search", "name=Muster*", "--pick", "2", "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["files"][0]["patient_id"] == order[1]
    res = stp(
        config, "convert", str(photo), "-o", str(tmp_path / "o4"), "--worklist", "wl",
        "--search", "name=Muster*", "--pick", "3",
    )  # fmt: skip
    assert res.returncode == 1 and "--pick 3: only 2 match(es)" in res.stdout

    # worklist only: typed-in patient data is refused
    res = stp(config, "worklist-devices", "edit", "wl", "--worklist-only")
    assert res.returncode == 0, res.stdout + res.stderr
    res = stp(
        config, "send", str(photo), "--to", "scp", "--patient-id", "X1", "--patient-name", "A^B"
    )
    assert res.returncode == 2 and "worklist only (wl)" in res.stdout + res.stderr
    assert len(scp.received()) == 1


def test_auto_map_batch_uses_one_association(wlmscp: WlmScp, tmp_path: Path) -> None:
    from pacsbox.sendtopacs.naming import auto_map

    names = ["WL001_Muster_1.jpg", "WL002_Muster_1.jpg", "WL004_Müller_1.jpg", "WL009_No_1.jpg"]
    files = []
    for n in names:
        (tmp_path / n).write_bytes(b"\xff\xd8\xff\xe0")
        files.append(tmp_path / n)
    before = wlmscp.log.read_text(errors="replace").count("Association Received")
    res = auto_map(files, wlmscp.device(), "{PatientID}_{LastName}_*.jpg")
    assert [m.status for m in res] == ["mapped", "mapped", "mapped", "choose"]
    assert [m.entry.patient.accession_number for m in res[:3]] == ["ACC100", "ACC200", "ACC400"]
    log = wlmscp.log.read_text(errors="replace")
    assert log.count("Association Received") - before == 1, log[-3000:]


def test_cli_http_worklist_device_and_dicom_mapped_by_its_own_attributes(
    wlmscp: WlmScp,
    start_storescp,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    from tests.helpers import make_ct
    from tests.unit.test_sendtopacs_naming import MAPPING, TOKEN

    config = tmp_path / "stp.json"
    with JsonWorklist() as his:
        maps = [a for k, v in MAPPING.items() for a in ("--map", f"{k}={v}")]
        res = stp(
            config, "worklist-devices", "add", "his", "--kind", "http",
            "--url", his.base + "/orders?pid={patient_id}&name={patient_name}",
            "--auth-header", f"Authorization: {TOKEN}", "--results-path", "data.orders", *maps,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        res = stp(config, "worklist", "his", "--patient-name", "Muster*", "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        rows = json.loads(res.stdout)
        assert [r["patient"]["patient_id"] for r in rows] == ["WL001", "WL002"]
        assert rows[0]["patient"]["birth_date"] == "19800101" and rows[0]["modality"] == "XC"
        res = stp(config, "worklist-devices", "echo", "his")
        assert res.returncode == 0 and "HTTP worklist answered" in res.stdout
    # the server is gone: a clear message and exit 1
    res = stp(config, "worklist", "his", "--patient-id", "WL001")
    assert res.returncode == 1 and "connection refused" in res.stdout + res.stderr

    # a DICOM file mapped by its own Patient ID / name and re-mapped (MWL device the default)
    scp = start_storescp("+xa")
    add_device(config, "scp", scp.port)
    args = ["--kind", "mwl", "--aec", "WLSCP", "--host", "127.0.0.1", "--port", str(wlmscp.port)]
    res = stp(config, "worklist-devices", "add", "wl", *args, "--default")
    assert res.returncode == 0, res.stdout + res.stderr
    ct = make_ct(patient_id="WL001", patient_name="Muster")  # the modality typed it short
    ct.AccessionNumber = ""
    ct.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    res = stp(config, "send", str(tmp_path / "ct.dcm"), "--to", "scp", "--replace-worklist-info")
    assert res.returncode == 0, res.stdout + res.stderr
    (got,) = [dcmread(p) for p in scp.received()]
    assert (str(got.PatientName), got.AccessionNumber) == ("Muster^Anna", "ACC100")
    assert got.StudyInstanceUID == wlmscp.study_uid
    assert got.SOPInstanceUID == ct.SOPInstanceUID
