"""DICOMweb (PS3.18) against create_app(archive): QIDO-RS matching through the query engine on
SQLite, PostgreSQL and MariaDB; WADO-RS retrieve / metadata / frames / bulkdata with transfer
syntax negotiation; STOW-RS through the ingest path; hostile input; CORS (SPEC E1)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)

from pacsbox.archive.users import UserDirectory
from pacsbox.web.app import create_app
from pacsbox.web.dicomweb import instance_metadata, parse_accept, parse_media_type
from tests.helpers import dataset_bytes, make_ct, write_study

ADMIN = ("boss", "admin-pass-1")
VIEWER = ("val", "viewer-pass-1")
OCTET_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CT = "1.2.840.10008.5.1.4.1.1.2"
DICOM_TS = 'multipart/related; type="application/dicom"; transfer-syntax='


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


H = basic(*ADMIN)


def _client(archive, **overrides) -> TestClient:  # noqa: ANN001
    users = UserDirectory(archive.engine)
    for (name, password), role in ((ADMIN, "admin"), (VIEWER, "viewer")):
        if users.get(name) is None:
            users.add(name, role, password)
    return TestClient(create_app(archive, archive.settings.model_copy(update=overrides)))


@pytest.fixture
def client(archive) -> Iterator[TestClient]:  # noqa: ANN001 - all three databases
    with _client(archive) as c:
        yield c


@pytest.fixture
def sqlite_client(sqlite_archive) -> Iterator[TestClient]:  # noqa: ANN001
    with _client(sqlite_archive) as c:
        yield c


# -- helpers ------------------------------------------------------------------------------


def multipart_body(
    parts: list[bytes], boundary: str = "pacsbox-test-boundary", ctype: str = "application/dicom"
) -> bytes:
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode() + part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def stow(c: TestClient, files: list[bytes], study: str = "", who=ADMIN, **kw) -> tuple[int, dict]:  # noqa: ANN001
    boundary = "pacsbox-test-boundary"
    r = c.post(
        "/dicom-web/studies" + (f"/{study}" if study else ""),
        content=multipart_body(files, boundary, **kw),
        headers={
            **basic(*who),
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
    )
    body = r.json() if r.headers.get("content-type", "").startswith("application/") else {}
    return r.status_code, body


def split_multipart(response) -> list[tuple[str, bytes]]:  # noqa: ANN001
    """(part Content-Type, body) of a multipart/related response (RFC 2046 framing)."""
    media, params = parse_media_type(response.headers["content-type"])
    assert media == "multipart/related", response.headers["content-type"]
    boundary = params["boundary"].encode()
    body = response.content
    assert body.startswith(b"--" + boundary + b"\r\n"), body[:80]
    pieces = (b"\r\n" + body).split(b"\r\n--" + boundary)
    assert pieces[0] == b"" and pieces[-1].startswith(b"--"), pieces[-1][:20]
    out = []
    for piece in pieces[1:-1]:
        head, _, data = piece[2:].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n") if line)
        assert "Content-Type" in headers, head  # case as OHIF/Cornerstone expect it
        out.append((headers["Content-Type"], data))
    return out


def values(model: dict, tag: str) -> list:
    return model.get(tag, {}).get("Value", [])


def frame_ct(n_frames: int = 3, rows: int = 8, cols: int = 8, **kw) -> Dataset:  # noqa: ANN003
    ds = make_ct(rows=rows, cols=cols, **kw)
    ds.NumberOfFrames = n_frames
    arr = (np.arange(n_frames * rows * cols, dtype=np.uint16) * 37 % 4000).reshape(
        n_frames, rows, cols
    )
    ds.PixelData = arr.tobytes()
    return ds


def file_bytes(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _seed(c: TestClient, tmp: Path) -> dict[str, list[Path]]:
    """Two patients, three studies (CT, MR, CT+SR-ish), stored by STOW."""
    a = write_study(
        tmp / "a", n_series=2, per_series=2, patient_id="PID-A", patient_name="Smith^Anne"
    )
    b = write_study(
        tmp / "b",
        n_series=1,
        per_series=3,
        patient_id="PID-B",
        patient_name="O'Brien^Bob",
        modality="MR",
    )
    cc = write_study(
        tmp / "c", n_series=1, per_series=1, patient_id="PID-A", patient_name="Smith^Anne"
    )
    for p in cc:
        ds = dcmread(p)
        ds.StudyDate = "20250615"
        ds.AccessionNumber = "ACC%_2"
        ds.save_as(p, enforce_file_format=True)
    code, body = stow(c, [p.read_bytes() for p in a + b + cc])
    assert code == 200, body
    return {"a": a, "b": b, "c": cc}


# -- QIDO-RS (all three databases) --------------------------------------------------------


def test_qido_matching_paging_and_errors_on_every_db(client: TestClient, tmp_path: Path) -> None:
    files = _seed(client, tmp_path)
    study_a = dcmread(files["a"][0]).StudyInstanceUID
    study_b = dcmread(files["b"][0]).StudyInstanceUID
    study_c = dcmread(files["c"][0]).StudyInstanceUID

    def studies(query: str = "", **headers: str) -> list[dict]:
        r = client.get(f"/dicom-web/studies{query}", headers={**H, **headers})
        assert r.status_code == 200, (query, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/dicom+json")
        return r.json()

    def uids(models: list[dict]) -> set[str]:
        return {values(m, "0020000D")[0] for m in models}

    assert uids(studies()) == {study_a, study_b, study_c}
    # person name: case-insensitive wildcard; by keyword and by tag; quote in a value
    assert uids(studies("?PatientName=smith*")) == {study_a, study_c}
    assert uids(studies("?00100010=O'BRIEN^BOB")) == {study_b}
    # date range, single date, open ranges
    assert uids(studies("?StudyDate=20250101-20251231")) == {study_c}
    assert uids(studies("?StudyDate=-20251231")) == {study_c}
    assert uids(studies("?StudyDate=20260101")) == {study_a, study_b}
    # ModalitiesInStudy, a series-level key (relational), UID list with comma and backslash
    assert uids(studies("?ModalitiesInStudy=MR")) == {study_b}
    assert uids(studies("?Modality=MR")) == {study_b}
    assert uids(studies(f"?StudyInstanceUID={study_a},{study_b}")) == {study_a, study_b}
    assert uids(studies(f"?StudyInstanceUID={study_a}%5C{study_c}")) == {study_a, study_c}
    # SQL LIKE metacharacters are literal
    assert uids(studies("?AccessionNumber=ACC%25_2")) == {study_c}
    assert uids(studies("?AccessionNumber=ACC_")) == set()
    # fuzzy matching: any name component starting with the value, any case
    assert uids(studies("?PatientName=anne&fuzzymatching=true")) == {study_a, study_c}
    assert uids(studies("?PatientName=anne&fuzzymatching=false")) == set()

    # default attributes (PS3.18 Table 10.6.3-3) and the protocol ones
    one = studies(f"?StudyInstanceUID={study_a}")[0]
    assert values(one, "00100020") == ["PID-A"]
    assert values(one, "00100010") == [{"Alphabetic": "Smith^Anne"}]
    assert values(one, "00201206") == [2] and values(one, "00201208") == [4]
    assert values(one, "00080061") == ["CT"]
    assert values(one, "00081190")[0].endswith(f"/dicom-web/studies/{study_a}")
    assert values(one, "00080056") == ["ONLINE"]
    # includefield by keyword and by tag
    one = studies(f"?StudyInstanceUID={study_a}&includefield=InstitutionName,00200010")[0]
    assert "00080080" in one and "00200010" in one

    # paging: limit / offset with the total count
    r = client.get("/dicom-web/studies?limit=2&offset=0", headers=H)
    assert r.headers["x-total-count"] == "3" and len(r.json()) == 2
    r2 = client.get("/dicom-web/studies?limit=2&offset=2", headers=H)
    assert r2.headers["x-total-count"] == "3" and len(r2.json()) == 1
    assert uids(r.json()) | uids(r2.json()) == {study_a, study_b, study_c}
    r3 = client.get("/dicom-web/studies?limit=2&offset=10", headers=H)  # past the end
    assert r3.json() == [] and r3.headers["x-total-count"] == "3"
    r4 = client.get("/dicom-web/studies?limit=5000", headers=H)  # streamed, counted first
    assert len(r4.json()) == 3 and r4.headers["x-total-count"] == "3"
    assert "x-total-count" not in client.get("/dicom-web/studies", headers=H).headers
    # nothing matches: 200 with an empty array (see docs/conformance.md)
    r = client.get("/dicom-web/studies?PatientID=NOBODY&limit=5", headers=H)
    assert r.status_code == 200 and r.json() == [] and r.headers["x-total-count"] == "0"

    # series and instances
    r = client.get(f"/dicom-web/studies/{study_a}/series", headers=H)
    series = r.json()
    assert len(series) == 2 and {values(s, "00080060")[0] for s in series} == {"CT"}
    assert all(values(s, "00201209") == [2] for s in series)
    assert "00100010" not in series[0]  # study attributes only when the study is not in the path
    se = values(series[0], "0020000E")[0]
    r = client.get("/dicom-web/series?Modality=MR&includefield=all", headers=H)
    assert {values(s, "0020000D")[0] for s in r.json()} == {study_b}
    assert values(r.json()[0], "00100020") == ["PID-B"]
    insts = client.get(f"/dicom-web/studies/{study_a}/series/{se}/instances", headers=H).json()
    assert sorted(values(i, "00200013")[0] for i in insts) == [1, 2]
    assert all(values(i, "00083002") == [ExplicitVRLittleEndian] for i in insts)
    assert values(insts[0], "00081190")[0].endswith(
        f"/studies/{study_a}/series/{se}/instances/{values(insts[0], '00080018')[0]}"
    )
    r = client.get("/dicom-web/instances?PatientID=PID-B&InstanceNumber=2", headers=H)
    assert len(r.json()) == 1 and values(r.json()[0], "0020000D") == [study_b]
    r = client.get(f"/dicom-web/studies/{study_b}/instances?includefield=all", headers=H)
    full = r.json()
    assert len(full) == 3 and values(full[0], "00280010") == [16]
    assert values(full[0], "00080020") == ["20260101"]  # from the stored attributes

    # bad parameters are 400 with a message; unsupported keys are ignored with a Warning
    for bad in (
        "?NoSuchKeyword=1",
        "?StudyDate=2026-01-01x",
        "?StudyDate=yesterday",
        "?limit=-1",
        "?limit=abc",
        "?offset=x",
        "?fuzzymatching=maybe",
        "?includefield=NotAnAttribute",
        "?StudyInstanceUID=1.2.abc",
        "?PatientID=A&PatientID=B",
        "?PatientName=" + "A" * 2000,
    ):
        r = client.get("/dicom-web/studies" + bad, headers=H)
        assert r.status_code == 400, (bad, r.status_code, r.text)
        assert r.json()["error"]["message"]
    r = client.get("/dicom-web/studies?NumberOfStudyRelatedSeries=2", headers=H)
    assert r.status_code == 200 and "299" in r.headers["warning"]
    assert "NumberOfStudyRelatedSeries" in r.headers["warning"]
    r = client.get("/dicom-web/studies", headers={**H, "Accept": "application/dicom+xml"})
    assert r.status_code == 406


def test_qido_sequence_key_and_sql_metacharacters(
    sqlite_client: TestClient, tmp_path: Path
) -> None:
    c = sqlite_client
    files = _seed(c, tmp_path)
    for value in ("'; DROP TABLE study; --", '" OR 1=1 --', "%", "_", "\\", "*'*"):
        for key in ("PatientName", "PatientID", "AccessionNumber", "StudyDescription", "Modality"):
            r = c.get("/dicom-web/studies", params={key: value}, headers=H)
            assert r.status_code in (200, 400), (key, value, r.text)
    assert len(c.get("/dicom-web/studies", headers=H).json()) == 3
    sop = dcmread(files["b"][0]).SOPInstanceUID
    r = c.get(
        "/dicom-web/instances", params={"SOPInstanceUID": sop, "includefield": "all"}, headers=H
    )
    assert len(r.json()) == 1
    r = c.get(
        "/dicom-web/instances",
        params={"ReferencedImageSequence.ReferencedSOPInstanceUID": "1.2.3"},
        headers=H,
    )
    assert r.status_code == 200 and r.json() == []
    # keys matched on the stored JSON: the total is counted while streaming
    r = c.get("/dicom-web/instances", params={"ImageType": "X*", "limit": 1}, headers=H)
    assert r.json() == [] and r.headers["x-total-count"] == "0"
    r = c.get("/dicom-web/instances", params={"SOPClassUID": CT, "limit": 1}, headers=H)
    assert len(r.json()) == 1 and r.headers["x-total-count"] == "8"
    r = c.get(
        "/dicom-web/instances",
        params={"PatientPosition": "", "Modality": "MR", "limit": 2, "offset": 1},
        headers=H,
    )
    assert len(r.json()) == 2 and r.headers["x-total-count"] == "3"


# -- STOW-RS ------------------------------------------------------------------------------


def test_stow_statuses_failures_and_study_mismatch(
    sqlite_client: TestClient, sqlite_archive, tmp_path: Path
) -> None:  # noqa: ANN001
    c = sqlite_client
    paths = write_study(tmp_path / "s", n_series=1, per_series=3)
    study = dcmread(paths[0]).StudyInstanceUID
    other = make_ct()  # another study
    code, body = stow(c, [p.read_bytes() for p in paths[:2]], study=study)
    assert code == 200, body
    refs = values(body, "00081199")
    assert len(refs) == 2 and "Value" not in body["00081198"]
    assert values(body, "00081190")[0].endswith(f"/studies/{study}")
    assert values(refs[0], "00081190")[0].startswith("http://testserver/dicom-web/studies/")
    # mixed: one good, one of another study, one not DICOM → 202
    code, body = stow(
        c, [paths[2].read_bytes(), file_bytes(other), b"not a dicom file"], study=study
    )
    assert code == 202, body
    failed = values(body, "00081198")
    assert sorted(values(f, "00081197")[0] for f in failed) == [0xA900, 0xC000]
    mismatch = [f for f in failed if values(f, "00081197") == [0xA900]][0]
    assert values(mismatch, "00081155") == [other.SOPInstanceUID]
    assert len(values(body, "00081199")) == 1
    # all failed → 409
    code, body = stow(c, [b"\x00" * 300, b"DICM" * 10])
    assert code == 409 and len(values(body, "00081198")) == 2
    # the wrong part type, duplicates accepted by the default policy
    code, body = stow(c, [b"{}"], ctype="application/json")
    assert code == 409 and values(values(body, "00081198")[0], "00081197") == [0xC000]
    code, body = stow(c, [paths[0].read_bytes()])
    assert code == 200
    # the index holds exactly the stored study (3 instances), nothing of the failures
    r = c.get("/dicom-web/instances", headers=H)
    assert {values(m, "00080018")[0] for m in r.json()} == {
        dcmread(p).SOPInstanceUID for p in paths
    }
    # the viewer may not store
    code, _ = stow(c, [paths[0].read_bytes()], who=VIEWER)
    assert code == 403
    events = (
        sqlite_archive.engine.connect()
        .exec_driver_sql("SELECT COUNT(*) FROM audit_event WHERE action = 'store'")
        .scalar()
    )
    assert events >= 6


def test_stow_hostile_bodies_store_nothing_and_lose_nothing(sqlite_archive, tmp_path: Path) -> None:  # noqa: ANN001
    with _client(sqlite_archive, stow_max_bytes=200_000) as c:
        good = make_ct(rows=32, cols=32)
        code, _ = stow(c, [file_bytes(good)])
        assert code == 200
        original = c.get(
            f"/dicom-web/studies/{good.StudyInstanceUID}/series/{good.SeriesInstanceUID}"
            f"/instances/{good.SOPInstanceUID}",
            headers={**H, "Accept": DICOM_ANY},
        )
        [(_ct, before)] = split_multipart(original)

        def post(body: bytes, ctype: str) -> int:
            r = c.post("/dicom-web/studies", content=body, headers={**H, "Content-Type": ctype})
            assert (
                r.json()["error"]["message"]
                if r.status_code >= 400 and r.status_code != 409
                else True
            )
            return r.status_code

        mp = 'multipart/related; type="application/dicom"; boundary=B'
        # a truncated copy of the stored instance (same UIDs) must not replace it
        damaged = file_bytes(good)[:-100]
        assert post(multipart_body([damaged], "B"), mp) == 409
        assert post(b"garbage without any boundary", mp) == 400
        assert post(multipart_body([file_bytes(make_ct())], "B")[:-30], mp) == 400  # no end
        assert post(multipart_body([file_bytes(make_ct())], "OTHER"), mp) == 400
        assert post(b"x", 'multipart/related; type="application/dicom"') == 400  # no boundary
        assert post(b"x", 'multipart/related; boundary="' + "b" * 201 + '"') == 400
        assert post(b"x", "application/dicom") == 415
        assert post(b"x", 'multipart/related; type="application/dicom+json"; boundary=B') == 415
        long_header = b"--B\r\nX-Junk: " + b"j" * 20_000 + b"\r\n\r\nx\r\n--B--\r\n"
        assert post(long_header, mp) == 400
        huge = multipart_body([b"\0" * 300_000], "B")
        assert post(huge, mp) == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
            yield b"--B\r\nContent-Type: application/dicom\r\n\r\n"
            for _ in range(40):
                yield b"\0" * 10_000

        r = c.post("/dicom-web/studies", content=chunks(), headers={**H, "Content-Type": mp})
        assert r.status_code == 413
        # the stored instance is unchanged and no spool file is left behind
        after = c.get(original.url, headers={**H, "Accept": DICOM_ANY})
        assert split_multipart(after)[0][1] == before
        assert list((Path(sqlite_archive.settings.data_dir) / "tmp").glob("stow-*")) == []
        assert len(c.get("/dicom-web/instances", headers=H).json()) == 1


# -- WADO-RS ------------------------------------------------------------------------------


def test_retrieve_study_series_instance_with_transfer_syntaxes(
    sqlite_client: TestClient, tmp_path: Path
) -> None:
    c = sqlite_client
    paths = write_study(tmp_path / "w", n_series=2, per_series=2)
    lossless = make_ct(rows=16, cols=16, study_uid=dcmread(paths[0]).StudyInstanceUID)
    lossless.compress(JPEGLSLossless, generate_instance_uid=False)
    jls = tmp_path / "jls.dcm"
    lossless.save_as(jls, enforce_file_format=True)
    code, body = stow(c, [p.read_bytes() for p in paths] + [jls.read_bytes()])
    assert code == 200, body
    first = dcmread(paths[0])
    study, series, sop = first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID
    by_sop = {dcmread(p).SOPInstanceUID: p for p in paths + [jls]}

    # as stored: every file byte-identical (data set bytes) to what was sent
    r = c.get(f"/dicom-web/studies/{study}", headers={**H, "Accept": DICOM_ANY})
    parts = split_multipart(r)
    assert len(parts) == 5
    for ctype, data in parts:
        ds = dcmread(BytesIO(data))
        assert ctype == f"application/dicom; transfer-syntax={ds.file_meta.TransferSyntaxUID}"
        src = by_sop[ds.SOPInstanceUID]
        assert data[dcm_offset(data) :] == dataset_bytes(src)
    # default (no transfer-syntax): Explicit VR LE — the JPEG-LS one is decompressed
    r = c.get(
        f"/dicom-web/studies/{study}",
        headers={**H, "Accept": 'multipart/related; type="application/dicom"'},
    )
    parts = split_multipart(r)
    assert {ct for ct, _ in parts} == {
        f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
    }
    got = {dcmread(BytesIO(d)).SOPInstanceUID: dcmread(BytesIO(d)) for _ct, d in parts}
    assert np.array_equal(got[lossless.SOPInstanceUID].pixel_array, dcmread(jls).pixel_array)
    # a named syntax: Implicit VR LE for a series, pixel values equal
    r = c.get(
        f"/dicom-web/studies/{study}/series/{series}",
        headers={
            **H,
            "Accept": DICOM_TS + ImplicitVRLittleEndian,
        },
    )
    parts = split_multipart(r)
    assert len(parts) == 2
    for _ct, data in parts:
        ds = dcmread(BytesIO(data))
        assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert np.array_equal(ds.pixel_array, dcmread(by_sop[ds.SOPInstanceUID]).pixel_array)
    # instance: multipart or a single application/dicom body
    url = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    [(_ct, data)] = split_multipart(c.get(url, headers={**H, "Accept": DICOM_ANY}))
    single = c.get(url, headers={**H, "Accept": "application/dicom; transfer-syntax=*"})
    assert single.headers["content-type"].startswith("application/dicom")
    assert single.content == data
    # JPEG-LS wanted: the native instance is compressed losslessly
    r = c.get(
        url,
        headers={
            **H,
            "Accept": f"{DICOM_TS}{ImplicitVRLittleEndian}; q=0.5, {DICOM_TS}{JPEGLSLossless}",
        },
    )
    [(ctype, data)] = split_multipart(r)  # the preferred (q=1) syntax wins
    assert ctype.endswith(JPEGLSLossless)
    assert np.array_equal(dcmread(BytesIO(data)).pixel_array, first.pixel_array)
    # nothing acceptable → 406; unknown → 404; malformed → 400
    r = c.get(
        url,
        headers={
            **H,
            "Accept": DICOM_TS + "1.2.840.10008.1.2.4.50",
        },
    )
    assert r.status_code == 406
    assert c.get(url, headers={**H, "Accept": "image/png"}).status_code == 406
    assert c.get(f"/dicom-web/studies/{other_uid(study)}", headers=H).status_code == 404
    assert (
        c.get(f"/dicom-web/studies/{study}/series/{series}/instances/1.2.3", headers=H).status_code
        == 404
    )
    # an instance asked through the wrong study is not found
    other = make_ct()
    stow(c, [file_bytes(other)])
    r = c.get(f"/dicom-web/studies/{study}/series/{other.SeriesInstanceUID}", headers=H)
    assert r.status_code == 404


def other_uid(uid: str) -> str:
    return uid[:-1] + ("1" if uid[-1] != "1" else "2")


def dcm_offset(data: bytes) -> int:
    from pacsbox.archive.header import dataset_offset

    return dataset_offset(BytesIO(data))


def test_metadata_series_study_instance_with_bulkdata(client: TestClient) -> None:
    c = client
    ds = make_ct(rows=8, cols=8)
    ds.EncapsulatedDocument = b"%PDF" + b"x" * 3000  # a bulk value (> 1 KiB) at the top level
    icon = Dataset()
    icon.Rows = icon.Columns = 32
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    icon.PixelData = bytes(range(256)) * 4 + bytes(1024)  # a bulk value inside a sequence
    ds.IconImageSequence = Sequence([icon])
    second = make_ct(ds.StudyInstanceUID, ds.SeriesInstanceUID, instance_number=2)
    code, _ = stow(c, [file_bytes(ds), file_bytes(second)])
    assert code == 200
    series_url = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    r = c.get(series_url + "/metadata", headers=H)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/dicom+json")
    meta = r.json()
    assert [values(m, "00200013")[0] for m in meta] == [1, 2]
    m = meta[0]
    # the data set as stored (pydicom round trip), Pixel Data and bulk as BulkDataURIs
    loaded = Dataset.from_json(json.dumps(m), bulk_data_uri_handler=lambda *_a: b"")
    assert loaded.SOPInstanceUID == ds.SOPInstanceUID and loaded.PatientName == "Doe^John"
    assert loaded.Rows == 8 and loaded.BitsStored == 12
    pixel_uri = m["7FE00010"]["BulkDataURI"]
    assert m["7FE00010"]["vr"] == "OW"
    doc_uri = m["00420011"]["BulkDataURI"]
    icon_uri = m["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]
    assert icon_uri.endswith("/bulkdata/00880200/0/7FE00010")
    for uri, expected in ((doc_uri, ds.EncapsulatedDocument), (icon_uri, icon.PixelData)):
        path = uri.replace("http://testserver", "")
        [(ctype, data)] = split_multipart(
            c.get(
                path, headers={**H, "Accept": 'multipart/related; type="application/octet-stream"'}
            )
        )
        assert ctype == "application/octet-stream" and data == expected
        assert c.get(path, headers={**H, "Accept": "application/octet-stream"}).content == expected
    [(ctype, data)] = split_multipart(
        c.get(pixel_uri.replace("http://testserver", ""), headers={**H, "Accept": OCTET_ANY})
    )
    assert data == ds.PixelData and ctype.endswith(ExplicitVRLittleEndian)
    # study and instance level agree with the series level
    study_meta = c.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/metadata", headers=H).json()
    assert study_meta == meta
    one = c.get(f"{series_url}/instances/{ds.SOPInstanceUID}/metadata", headers=H).json()
    assert one == [m]
    missing = f"/dicom-web/studies/{other_uid(ds.StudyInstanceUID)}/metadata"
    assert c.get(missing, headers=H).status_code == 404
    assert c.get(series_url + "/instances/1.2.3/metadata", headers=H).status_code == 404
    for bad in ("bulkdata/zz", "bulkdata/00880200/x/7FE00010", "bulkdata/00880200/0"):
        r = c.get(f"{series_url}/instances/{ds.SOPInstanceUID}/{bad}", headers=H)
        assert r.status_code == 400, bad
    r = c.get(f"{series_url}/instances/{ds.SOPInstanceUID}/bulkdata/00880200/5/7FE00010", headers=H)
    assert r.status_code == 404


def _stored_multiframe(
    c: TestClient, syntax: str | None, fragments_per_frame: int = 1, bot: bool = True
) -> tuple[Dataset, np.ndarray]:
    ds = frame_ct(3)
    arr = ds.pixel_array.copy()
    if syntax is not None:
        ds.compress(syntax, generate_instance_uid=False)
        if fragments_per_frame > 1 or not bot:
            from pydicom.encaps import generate_frames

            frames = list(generate_frames(ds.PixelData, number_of_frames=3))
            ds.PixelData = encapsulate(frames, fragments_per_frame=fragments_per_frame, has_bot=bot)
    code, body = stow(c, [file_bytes(ds)])
    assert code == 200, body
    return ds, arr


def _frames_url(ds: Dataset, frames: str) -> str:
    return (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/{frames}"
    )


def test_frames_native_and_encapsulated(sqlite_client: TestClient) -> None:
    c = sqlite_client
    ds, arr = _stored_multiframe(c, None)
    r = c.get(_frames_url(ds, "2"), headers={**H, "Accept": OCTET_ANY})
    assert r.headers["content-type"].startswith(
        'multipart/related; type="application/octet-stream"; boundary='
    )
    assert r.content.startswith(b"--")
    [(ctype, data)] = split_multipart(r)
    assert ctype == f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
    assert data == arr[1].tobytes()
    parts = split_multipart(c.get(_frames_url(ds, "3,1"), headers={**H, "Accept": OCTET_ANY}))
    assert [d for _c, d in parts] == [arr[2].tobytes(), arr[0].tobytes()]
    # single part when the Accept is a bare media type
    r = c.get(_frames_url(ds, "1"), headers={**H, "Accept": "application/octet-stream"})
    assert r.content == arr[0].tobytes()
    # JPEG-LS wanted from a native instance: encoded losslessly, values equal
    [(ctype, data)] = split_multipart(
        c.get(_frames_url(ds, "2"), headers={**H, "Accept": 'multipart/related; type="image/jls"'})
    )
    assert ctype == f"image/jls; transfer-syntax={JPEGLSLossless}"
    import jpeg_ls
    from pydicom.pixels import get_decoder  # noqa: F401 - decoders registered

    assert np.array_equal(jpeg_ls.decode(np.frombuffer(data, np.uint8)), arr[1])
    # bad frame lists
    for bad, code in (("0", 400), ("a", 400), ("1,,2", 400), ("4", 404), ("1-2", 400)):
        assert (
            c.get(_frames_url(ds, bad), headers={**H, "Accept": OCTET_ANY}).status_code == code
        ), bad
    assert c.get(_frames_url(ds, "1"), headers={**H, "Accept": "image/jpeg"}).status_code == 406

    # encapsulated: one fragment per frame (pydicom's writer), several per frame with and
    # without a Basic Offset Table — the stored fragments with the stored syntax
    for syntax, per, bot in (
        (RLELossless, 1, True),
        (JPEGLSLossless, 1, True),
        (JPEGLSLossless, 2, True),
        (JPEGLSLossless, 3, False),
    ):
        cds, carr = _stored_multiframe(c, syntax, per, bot)
        from pydicom.encaps import generate_frames

        expected = list(generate_frames(cds.PixelData, number_of_frames=3))
        parts = split_multipart(
            c.get(_frames_url(cds, "1,2,3"), headers={**H, "Accept": OCTET_ANY})
        )
        assert [d for _c, d in parts] == expected, (syntax, per, bot)
        assert {ct for ct, _d in parts} == {f"application/octet-stream; transfer-syntax={syntax}"}
        # default octet-stream: decoded to native
        [(ctype, data)] = split_multipart(
            c.get(
                _frames_url(cds, "2"),
                headers={**H, "Accept": 'multipart/related; type="application/octet-stream"'},
            )
        )
        assert ctype.endswith(ExplicitVRLittleEndian)
        assert np.frombuffer(data, np.uint16).reshape(8, 8).tolist() == carr[1].tolist()
        if syntax == JPEGLSLossless:
            [(ctype, data)] = split_multipart(
                c.get(
                    _frames_url(cds, "3"),
                    headers={**H, "Accept": 'multipart/related; type="image/jls"'},
                )
            )
            assert ctype == f"image/jls; transfer-syntax={JPEGLSLossless}" and data == expected[2]


def test_path_tricks_malformed_uids_auth_and_cors(sqlite_archive) -> None:  # noqa: ANN001
    with _client(sqlite_archive, cors_origins=["https://viewer.example"]) as c:
        for path in (
            "/dicom-web/studies/..%2F..%2Fetc%2Fpasswd",
            "/dicom-web/studies/1.2.abc/series",
            "/dicom-web/studies/1.2.3/series/1.2.3%00/metadata",
            "/dicom-web/studies/" + "1" * 65 + "/metadata",
            "/dicom-web/studies/1.2.3/series/1.2;DROP/instances/1.2/frames/1",
            "/dicom-web/studies/1.2.3/series/1.2/instances/1.2/bulkdata/..%2F..%2Fx",
        ):
            r = c.get(path, headers=H)
            assert r.status_code == 400, (path, r.status_code, r.text)
        assert c.get("/dicom-web/studies").status_code == 401
        assert c.get("/dicom-web/studies", headers=basic(*VIEWER)).status_code == 200
        # CORS: preflight and simple requests from the allowed origin only, DICOMweb only
        pre = c.options(
            "/dicom-web/studies",
            headers={
                "Origin": "https://viewer.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://viewer.example"
        r = c.get("/dicom-web/studies?limit=1", headers={**H, "Origin": "https://viewer.example"})
        assert r.headers["access-control-allow-origin"] == "https://viewer.example"
        assert "X-Total-Count" in r.headers["access-control-expose-headers"]
        assert "access-control-allow-credentials" not in r.headers
        r = c.get("/dicom-web/studies", headers={**H, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        r = c.get("/api/me", headers={**H, "Origin": "https://viewer.example"})
        assert "access-control-allow-origin" not in r.headers
    with _client(sqlite_archive) as c:  # default: no CORS at all
        r = c.get("/dicom-web/studies", headers={**H, "Origin": "https://viewer.example"})
        assert "access-control-allow-origin" not in r.headers


def test_accept_header_parsing() -> None:
    ranges = parse_accept(
        DICOM_TS + "1.2.840.10008.1.2.4.80; q=0.5, "
        'multipart/related; type="application/dicom"; transfer-syntax=*, application/json; q=0'
    )
    assert [(r.part_type, r.transfer_syntax) for r in ranges] == [
        ("application/dicom", "*"),
        ("application/dicom", "1.2.840.10008.1.2.4.80"),
    ]
    assert parse_media_type('multipart/related; type="a/b;c"; boundary=x') == (
        "multipart/related",
        {"type": "a/b;c", "boundary": "x"},
    )


def test_read_audit_once_per_study_and_window(
    sqlite_client: TestClient, sqlite_archive, tmp_path: Path
) -> None:  # noqa: ANN001
    c = sqlite_client
    paths = write_study(tmp_path / "a", n_series=1, per_series=2)
    stow(c, [p.read_bytes() for p in paths])
    ds = dcmread(paths[0])
    for _ in range(5):
        c.get(_frames_url(ds, "1"), headers={**H, "Accept": OCTET_ANY})
    c.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/metadata", headers=H)
    with sqlite_archive.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT detail, study_uid, username FROM audit_event WHERE action = 'read'"
        ).all()
    assert sorted(r[0] for r in rows if r[1] == ds.StudyInstanceUID) == [
        "WADO-RS frames",
        "WADO-RS metadata",
    ]
    assert {r[2] for r in rows} == {ADMIN[0]}


def test_instance_metadata_bulk_uris_with_and_without_sequences() -> None:
    url = "http://h/dicom-web/studies/1/series/2/instances/3"
    flat = '{"00080018":{"vr":"UI","Value":["3"]},"00420011":{"vr":"OB"},"00660023":{"vr":"OW"}}'
    out = json.loads(instance_metadata(flat, url, ExplicitVRLittleEndian, 16, False))
    assert out["00420011"] == {"vr": "OB", "BulkDataURI": f"{url}/bulkdata/00420011"}
    assert out["00660023"]["BulkDataURI"] == f"{url}/bulkdata/00660023"
    assert "7FE00010" not in out
    # with sequences the placeholders are found by their position, never by look-alikes
    nested = (
        '{"00081140":{"vr":"SQ","Value":[{"00420011":{"vr":"OB","BulkDataURI":""},'
        '"00091001":{"vr":"OB"}}]},"00420011":{"vr":"OB"}}'
    )
    out = json.loads(instance_metadata(nested, url, JPEGLSLossless, 16, True))
    item = out["00081140"]["Value"][0]
    assert item["00420011"]["BulkDataURI"] == f"{url}/bulkdata/00081140/0/00420011"
    assert item["00091001"]["BulkDataURI"] == f"{url}/bulkdata/00081140/0/00091001"
    assert out["00420011"]["BulkDataURI"] == f"{url}/bulkdata/00420011"
    assert out["7FE00010"] == {"vr": "OB", "BulkDataURI": f"{url}/bulkdata/7FE00010"}
    # the common case is untouched text plus Pixel Data
    plain = '{"00080018":{"vr":"UI","Value":["3"]}}'
    assert instance_metadata(plain, url, ImplicitVRLittleEndian, 8, True) == (
        '{"00080018":{"vr":"UI","Value":["3"]},'
        f'"7FE00010":{{"vr":"OB","BulkDataURI":"{url}/bulkdata/7FE00010"}}}}'
    )


def test_native_storage_format_is_served_as_part10(tmp_path: Path) -> None:
    from pacsbox.app import build_archive
    from pacsbox.settings import Settings

    settings = Settings(
        data_dir=tmp_path / "data",
        bind_address="127.0.0.1",
        dicom_port=0,
        dicom_tls_port=0,
        http_port=0,
        hl7_port=0,
        storage_format="native",
    )
    archive = build_archive(settings)
    try:
        with _client(archive) as c:
            ds = make_ct()
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            path = tmp_path / "implicit.dcm"
            ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
            assert stow(c, [path.read_bytes()])[0] == 200
            url = (
                f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}"
            )
            [(ctype, data)] = split_multipart(c.get(url, headers={**H, "Accept": DICOM_ANY}))
            assert ctype == f"application/dicom; transfer-syntax={ImplicitVRLittleEndian}"
            assert data[128:132] == b"DICM" and data[dcm_offset(data) :] == dataset_bytes(path)
            # the default syntax (Explicit VR LE): re-encoded, same values
            [(ctype, data)] = split_multipart(c.get(url, headers=H))
            assert ctype.endswith(ExplicitVRLittleEndian)
            got = dcmread(BytesIO(data))
            assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert got.PixelData == ds.PixelData and got.PatientName == ds.PatientName
    finally:
        archive.engine.dispose()
