"""Interoperability of the C-FIND SCP (PS3.4 Annex C) with DCMTK findscu 3.6.7 and with
pynetdicom as a client, against a real ``pacsbox serve``: the three Q/R models, every
matching type, character sets, statuses (A900, 0124, FE00), extended negotiation, hostile
identifiers and the ``pacsbox find`` CLI."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

from pacsbox.dicom.scu import send_files
from tests.helpers import (
    Server,
    dcmtk_env,
    free_port,
    have,
    make_ct,
    open_server_archive,
    server_env,
)

pytestmark = [pytest.mark.interop, pytest.mark.xdist_group("findscu")]
FINDSCU = "/usr/bin/findscu"
STUDY_ROOT = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_STUDY_ONLY = "1.2.840.10008.5.1.4.1.2.3.1"
S_SMITH, S_MULLER, S_WEBER, S_SQL, S_BULK = (generate_uid() for _ in range(5))
ALL = {S_SMITH, S_MULLER, S_WEBER, S_SQL, S_BULK}
BULK = 250  #: instances of one study, enough for a C-CANCEL to arrive mid-stream
#: The same on the server databases: 120 was sometimes answered in full before the C-CANCEL
#: was read under load (the responses are tiny), so the margin is larger.
DB_BULK = 400
SE_SMITH_MR = generate_uid()


def _files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []

    def save(ds, name: str) -> None:
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        out.append(path)

    ct_series = generate_uid()
    for i in range(3):
        ds = make_ct(
            S_SMITH,
            ct_series if i < 2 else SE_SMITH_MR,
            patient_id="P1",
            patient_name="Smith^John",
            instance_number=i + 1,
        )
        if i == 2:
            ds.Modality = "MR"
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
            rq = Dataset()
            rq.RequestedProcedureID = "RP77"
            ds.RequestAttributesSequence = [rq]
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260105", "093000", "ACC1"
        save(ds, f"smith{i}.dcm")
    ds = make_ct(S_MULLER, patient_id="P2", patient_name="Müller^Jürgen")  # ISO_IR 192
    ds.StudyDate, ds.AccessionNumber = "20250220", "ACC2"
    save(ds, "muller.dcm")
    ds = make_ct(S_WEBER, patient_id="P3", patient_name="Wéber^Anne")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDate, ds.AccessionNumber = "20240310", "A%_3"
    save(ds, "weber.dcm")
    ds = make_ct(S_SQL, patient_id="P'4", patient_name="O'Brien^Pat")
    ds.StudyDate, ds.AccessionNumber = "20230101", "X_4"
    save(ds, "obrien.dcm")
    bulk_series = generate_uid()
    for i in range(BULK):
        ds = make_ct(S_BULK, bulk_series, patient_id="PB", patient_name="Bulk^Load", rows=2, cols=2)
        ds.StudyDate, ds.AccessionNumber = "", "BULK"
        save(ds, f"bulk{i}.dcm")
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not have(FINDSCU):
        pytest.skip("DCMTK findscu not installed")
    root = tmp_path_factory.mktemp("findscu")
    data = root / "srv" / "data"
    data.mkdir(parents=True)
    port = free_port()
    env = server_env(
        data, port, None, PACSBOX_PERMISSIVE_AES="true", PACSBOX_PERMISSIVE_AES_ENABLED="true"
    )
    srv = Server(data, port, env).start()
    try:
        report = send_files(_files(root / "files"), "127.0.0.1", port, "PACSBOX", calling="MOD")
        assert not report.failed, report.failed
        yield srv
    finally:
        srv.stop()


def findscu(
    server: Server, tmp_path: Path, *keys: str | bytes, model: str = "-S", extra: tuple = ()
) -> tuple[list[Dataset], str]:
    """Run findscu, return (the extracted responses, its verbose output)."""
    out = tmp_path / f"rsp{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    args: list = [FINDSCU, "-v", "-aec", "PACSBOX", model, "-X", "-od", str(out), *extra]
    for k in keys:
        args += ["-k", k]
    args += ["127.0.0.1", str(server.port)]
    proc = subprocess.run(
        args,
        env=dcmtk_env(),
        capture_output=True,
        timeout=60,
    )
    text = proc.stdout.decode("latin-1") + proc.stderr.decode("latin-1")
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], text


def values(rsps: list[Dataset], keyword: str) -> set:
    return {str(r.get(keyword, "")) for r in rsps}


def test_study_root_levels(server, tmp_path) -> None:
    rsps, _ = findscu(
        server,
        tmp_path,
        "QueryRetrieveLevel=STUDY",
        "StudyInstanceUID",
        "PatientName",
        "ModalitiesInStudy",
        "SOPClassesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "NumberOfPatientRelatedStudies",
        "RetrieveAETitle",
        "InstanceAvailability",
        "StudyDescription",
        "TimezoneOffsetFromUTC",
        "(0020,1070)",  # Other Study Numbers (retired, not indexed)
    )
    assert values(rsps, "StudyInstanceUID") == ALL
    smith = next(r for r in rsps if r.StudyInstanceUID == S_SMITH)
    assert list(smith.ModalitiesInStudy) == ["CT", "MR"]
    assert set(smith.SOPClassesInStudy) == {
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.5.1.4.1.1.4",
    }
    assert smith.NumberOfStudyRelatedSeries == 2 and smith.NumberOfStudyRelatedInstances == 3
    assert smith.NumberOfPatientRelatedStudies == 1
    assert smith.RetrieveAETitle == "PACSBOX" and smith.InstanceAvailability == "ONLINE"
    assert smith.QueryRetrieveLevel == "STUDY"
    # supported-but-empty and unsupported keys come back zero-length
    assert smith.StudyDescription == "" and "TimezoneOffsetFromUTC" in smith
    assert "OtherStudyNumbers" in smith and not smith.OtherStudyNumbers

    series, _ = findscu(
        server,
        tmp_path,
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={S_SMITH}",
        "SeriesInstanceUID",
        "Modality",
        "NumberOfSeriesRelatedInstances",
    )
    assert sorted((str(s.Modality), int(s.NumberOfSeriesRelatedInstances)) for s in series) == [
        ("CT", 2),
        ("MR", 1),
    ]
    images, _ = findscu(
        server,
        tmp_path,
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={S_SMITH}",
        f"SeriesInstanceUID={SE_SMITH_MR}",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
        "Rows",
    )
    assert len(images) == 1 and images[0].SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert images[0].Rows == 16


def test_patient_root_and_patient_study_only(server, tmp_path) -> None:
    pats, _ = findscu(
        server,
        tmp_path,
        "QueryRetrieveLevel=PATIENT",
        "PatientID",
        "PatientName",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
        model="-P",
    )
    assert values(pats, "PatientID") == {"P1", "P2", "P3", "P'4", "PB"}
    p1 = next(p for p in pats if p.PatientID == "P1")
    assert (
        p1.NumberOfPatientRelatedStudies,
        p1.NumberOfPatientRelatedSeries,
        p1.NumberOfPatientRelatedInstances,
    ) == (1, 2, 3)
    studies, _ = findscu(
        server, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=P1", "StudyInstanceUID", model="-P"
    )
    assert values(studies, "StudyInstanceUID") == {S_SMITH}
    images, _ = findscu(
        server,
        tmp_path,
        "QueryRetrieveLevel=IMAGE",
        "PatientID=P1",
        "Modality=MR",
        "SOPInstanceUID",
        model="-P",
    )
    assert len(images) == 1 and images[0].PatientID == "P1"
    pso, _ = findscu(
        server, tmp_path, "QueryRetrieveLevel=STUDY", "PatientName=M*", "StudyDate", model="-O"
    )
    assert values(pso, "StudyInstanceUID") == {S_MULLER}
    # Patient/Study Only has no series level: A900
    rsps, text = findscu(server, tmp_path, "QueryRetrieveLevel=SERIES", "Modality", model="-O")
    assert rsps == [] and "DataSetDoesNotMatchSOPClass" in text


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (("PatientID=P1",), {S_SMITH}),  # single value
        (("PatientID",), ALL),  # universal
        (("PatientName=*",), ALL),  # wildcard-only
        (("PatientName=?*",), ALL),
        (("PatientName=sm?th*",), {S_SMITH}),  # wildcard, case-insensitive name
        (("AccessionNumber=A%*",), {S_WEBER}),  # SQL % is a literal
        (("AccessionNumber=A_*",), set()),  # SQL _ is a literal
        (("AccessionNumber=?_4",), {S_SQL}),
        (("StudyDate=20240101-20251231",), {S_MULLER, S_WEBER}),  # date range
        (("StudyDate=20250101-",), {S_SMITH, S_MULLER}),
        (("StudyDate=-20231231",), {S_SQL}),
        (("StudyTime=0900-0959",), {S_SMITH}),  # time range
        ((f"StudyInstanceUID={S_SMITH}\\{S_SQL}",), {S_SMITH, S_SQL}),  # UID list
        (("ModalitiesInStudy=MR",), {S_SMITH}),
        (("Modality=MR",), {S_SMITH}),  # relational: series key at study level
        (("PatientName=O'Brien*",), {S_SQL}),
        (("PatientName='; DROP TABLE patient; --",), set()),
        (("PatientID=P'4",), {S_SQL}),
    ],
)
def test_matching_types(server, tmp_path, keys, expected) -> None:
    rsps, text = findscu(server, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", *keys)
    assert "Success" in text, text[-2000:]
    assert values(rsps, "StudyInstanceUID") == expected


def test_sequence_matching_at_series_level(server, tmp_path) -> None:
    rsps, _ = findscu(
        server,
        tmp_path,
        "QueryRetrieveLevel=SERIES",
        "SeriesInstanceUID",
        "(0040,0275)[0].(0040,1001)=RP7?",
    )
    assert values(rsps, "SeriesInstanceUID") == {SE_SMITH_MR}
    rsps, _ = findscu(
        server, tmp_path, "QueryRetrieveLevel=SERIES", "(0040,0275)[0].(0040,1001)=XX*"
    )
    assert rsps == []
    rsps, _ = findscu(
        server,
        tmp_path,
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={S_SMITH}",
        "Modality=MR",
        "(0040,0275)[0].(0040,1001)",
    )
    assert len(rsps) == 1
    assert rsps[0].RequestAttributesSequence[0].RequestedProcedureID == "RP77"


def test_character_sets(server, tmp_path) -> None:
    # UTF-8 query, UTF-8 answer
    rsps, _ = findscu(
        server,
        tmp_path,
        "(0008,0005)=ISO_IR 192",
        "QueryRetrieveLevel=STUDY",
        "PatientName=müller*",
        "StudyInstanceUID",
    )
    assert len(rsps) == 1
    assert rsps[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(rsps[0].PatientName) == "Müller^Jürgen"
    # Latin-1 query (the name stored from an ISO_IR 100 instance) answered in Latin-1
    rsps, _ = findscu(
        server,
        tmp_path,
        b"(0008,0005)=ISO_IR 100",
        b"QueryRetrieveLevel=STUDY",
        b"PatientName=W\xe9BER*",
        b"StudyInstanceUID",
    )
    assert len(rsps) == 1 and rsps[0].StudyInstanceUID == S_WEBER
    assert rsps[0].SpecificCharacterSet == "ISO_IR 100"
    assert str(rsps[0].PatientName) == "Wéber^Anne"
    # a query without a character set still gets non-ASCII names, declared as UTF-8
    rsps, _ = findscu(server, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=P2", "PatientName")
    assert rsps[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(rsps[0].PatientName) == "Müller^Jürgen"
    # Latin-1 requested, but a name Latin-1 cannot carry: UTF-8
    rsps, _ = findscu(
        server,
        tmp_path,
        "(0008,0005)=ISO_IR 100",
        "QueryRetrieveLevel=STUDY",
        "PatientID=P2",
        "PatientName",
    )
    assert str(rsps[0].PatientName) == "Müller^Jürgen"  # ü is in Latin-1
    assert rsps[0].SpecificCharacterSet == "ISO_IR 100"


@pytest.mark.parametrize(
    "keys",
    [
        ("QueryRetrieveLevel=FOO", "PatientName"),
        ("PatientName=*",),  # no Query/Retrieve Level
        ("QueryRetrieveLevel=STUDY", "StudyDate=yesterday"),
        ("QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.3.x"),
        ("QueryRetrieveLevel=STUDY", "PatientName=" + "A" * 3000),  # huge value
    ],
)
def test_bad_identifiers_get_a900(server, tmp_path, keys) -> None:
    rsps, text = findscu(server, tmp_path, *keys)
    assert rsps == []
    assert "DataSetDoesNotMatchSOPClass" in text, text[-1500:]


def test_cancel(server, tmp_path) -> None:
    rsps, text = findscu(
        server,
        tmp_path,
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={S_BULK}",
        "SOPInstanceUID",
        extra=("--cancel", "1"),
    )
    assert "Final Find Response (Cancel: MatchingTerminatedDueToCancelRequest)" in text, text[-800:]
    assert 1 <= len(rsps) < BULK


# -- pynetdicom as the requestor: statuses, negotiation, wrong VRs --------------------------


def _assoc(server: Server, calling: str = "PYNET", ext: bytes | None = None):  # noqa: ANN202
    ae = AE(ae_title=calling)
    for uid in (STUDY_ROOT, PATIENT_ROOT, PATIENT_STUDY_ONLY):
        ae.add_requested_context(uid, ExplicitVRLittleEndian)  # keeps the VRs we send
    items = []
    if ext is not None:
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = STUDY_ROOT
        item.service_class_application_information = ext
        items.append(item)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACSBOX", ext_neg=items)
    assert assoc.is_established
    return assoc


def _find(assoc, ds: Dataset, model: str = STUDY_ROOT) -> tuple[int, str, list[Dataset]]:
    """(final status, its Error Comment, the matches)."""
    final, comment, found = -1, "", []
    for status, identifier in assoc.send_c_find(ds, model):
        code = int(status.Status)
        if code in (0xFF00, 0xFF01):
            found.append(identifier)
        else:
            final, comment = code, str(status.get("ErrorComment", ""))
    return final, comment, found


def test_extended_negotiation_and_hierarchical_queries(server) -> None:
    series = Dataset()
    series.QueryRetrieveLevel = "SERIES"
    series.Modality = "MR"
    series.SeriesInstanceUID = ""
    # relational (negotiated): no Study Instance UID needed
    assoc = _assoc(server, ext=b"\x01\x01")
    final, _, found = _find(assoc, series)
    assoc.release()
    assert final == 0 and len(found) == 1
    # hierarchical (relational-queries = 0): the Study Instance UID is required
    assoc = _assoc(server, ext=b"\x00")
    final, comment, found = _find(assoc, series)
    assert final == 0xA900 and "StudyInstanceUID" in comment and not found
    series.StudyInstanceUID = S_SMITH
    final, _, found = _find(assoc, series)
    assert final == 0 and len(found) == 1
    assoc.release()


def test_wrong_vr_and_undecodable_values(server) -> None:
    assoc = _assoc(server)
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.add_new(0x00080020, "UL", 20240101)  # Study Date as UL
    final, comment, _ = _find(assoc, ds)
    assert final == 0xA900 and "VR UL" in comment
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.add_new(0x00100010, "PN", "A" * 60000)  # a huge name in one element
    final, comment, _ = _find(assoc, ds)
    assert final == 0xA900 and "longer" in comment
    assoc.release()


def test_query_permission(server) -> None:
    archive = open_server_archive(server)
    try:
        archive.registry.check_calling(
            "NOQUERY", "127.0.0.1", permissive=True, permissive_enabled=True
        )
        archive.registry.edit("NOQUERY", allow_query=False)
    finally:
        archive.engine.dispose()
    assoc = _assoc(server, calling="NOQUERY")
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "*"
    final, comment, found = _find(assoc, ds)
    assoc.release()
    assert found == [] and final == 0x0124 and "not allowed" in comment


def test_pacsbox_find_cli(server) -> None:
    target = f"PACSBOX@127.0.0.1:{server.port}"
    proc = server.cli(
        "find", target, "-k", "PatientName=smith*", "-k", "ModalitiesInStudy", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == 0
    assert [m["ModalitiesInStudy"] for m in out["matches"]] == ["CT\\MR"]
    proc = server.cli(
        "find",
        target,
        "--model",
        "patient",
        "--level",
        "PATIENT",
        "-k",
        "PatientID=P2",
        "-k",
        "PatientName",
    )
    assert proc.returncode == 0 and "Müller^Jürgen" in proc.stdout
    proc = server.cli("find", target, "--model", "patient-study", "--level", "SERIES")
    assert proc.returncode == 1 and "0xa900" in proc.stderr


@pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)
def test_streaming_and_cancel_on_server_databases(db_url, make_server, tmp_path) -> None:
    """The same C-FIND path on PostgreSQL (psycopg stream) and MariaDB (unbuffered cursor):
    results, a C-CANCEL mid-stream, and the next query on the same server still answered."""
    srv = make_server(db_url, PACSBOX_PERMISSIVE_AES="true", PACSBOX_PERMISSIVE_AES_ENABLED="true")
    folder = tmp_path / "files"
    folder.mkdir()
    study, series, paths = generate_uid(), generate_uid(), []
    for i in range(DB_BULK):
        ds = make_ct(study, series, patient_id="DBP", patient_name="Dé^Bé", rows=2, cols=2)
        paths.append(folder / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    assert not send_files(paths, "127.0.0.1", srv.port, "PACSBOX", calling="MOD").failed
    rsps, text = findscu(
        srv, tmp_path, "QueryRetrieveLevel=IMAGE", "SOPInstanceUID", extra=("--cancel", "1")
    )
    assert "Cancel: MatchingTerminatedDueToCancelRequest" in text, text[-800:]
    assert 1 <= len(rsps) < DB_BULK
    rsps, _ = findscu(
        srv,
        tmp_path,
        "(0008,0005)=ISO_IR 192",
        "QueryRetrieveLevel=STUDY",
        "PatientName=dé*",
        "NumberOfStudyRelatedInstances",
    )
    assert len(rsps) == 1 and rsps[0].NumberOfStudyRelatedInstances == DB_BULK
    assert str(rsps[0].PatientName) == "Dé^Bé"
