"""DICOMweb interoperability with the real ``dicomweb-client`` package (PS3.18; SPEC E1).

One ``pacsbox serve`` (SQLite, HTTP on a loopback port, a small STOW-RS body limit) is shared by
the tests of this module; dicomweb-client talks to it with HTTP Basic through ``requests``.
Instances are stored with STOW-RS and then searched (QIDO-RS) and retrieved (WADO-RS study,
series, instance, metadata, frames, bulk data); what comes back is compared with what was
stored — data set elements equal when no transcoding happens, pixel values equal when it does.
Hostile requests get 4xx answers or failed parts, and nothing stored is lost.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from tests.helpers import Server, free_port, make_ct, server_env, write_study

#: the tests share one server: one xdist group (--dist loadgroup)
pytestmark = [pytest.mark.interop, pytest.mark.xdist_group(name="dicomweb_client")]

USER, PASSWORD = "dwclient", "dicomweb-pass-1"
STOW_LIMIT = 5_000_000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    tmp = tmp_path_factory.mktemp("dicomweb")
    data = tmp / "srv" / "data"
    data.mkdir(parents=True)
    http_port = free_port()
    env = server_env(
        data,
        free_port(),
        None,
        PACSBOX_HTTP_PORT=str(http_port),
        PACSBOX_STOW_MAX_BYTES=str(STOW_LIMIT),
    )
    server = Server(data, int(env["PACSBOX_DICOM_PORT"]), env)
    res = server.cli("user", "add", USER, "--role", "technician", "--password", PASSWORD)
    assert res.returncode == 0, res.stdout + res.stderr
    server.start()
    try:
        yield server, f"http://127.0.0.1:{http_port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(served: tuple[Server, str]) -> DICOMwebClient:
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    return DICOMwebClient(url=served[1] + "/dicom-web", session=session, timeout=60)


def _ds_equal(got: Dataset, want: Dataset) -> None:
    """Every data set element equal (file meta aside)."""
    assert set(got.keys()) == set(want.keys())
    for elem in want:
        assert got[elem.tag].value == elem.value, elem.keyword or elem.tag


def test_store_search_retrieve_with_dicomweb_client(client: DICOMwebClient, tmp_path: Path) -> None:
    paths = write_study(tmp_path / "a", n_series=2, per_series=3, patient_id="DW-1")
    originals = [dcmread(p) for p in paths]
    study = originals[0].StudyInstanceUID
    result = client.store_instances(originals, study_instance_uid=study)
    assert len(result.ReferencedSOPSequence) == 6
    assert "FailedSOPSequence" not in result or not result.FailedSOPSequence

    found = client.search_for_studies(search_filters={"PatientID": "DW-1"})
    assert [f["0020000D"]["Value"][0] for f in found] == [study]
    found = client.search_for_studies(
        search_filters={"PatientName": "doe*", "StudyDate": "20250101-20261231"},
        fields=["StudyDescription"],
        limit=10,
    )
    assert study in {f["0020000D"]["Value"][0] for f in found}
    assert client.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []
    series = client.search_for_series(study, search_filters={"Modality": "CT"})
    assert len(series) == 2
    se = originals[0].SeriesInstanceUID
    insts = client.search_for_instances(study, se, search_filters={"InstanceNumber": "2"})
    assert [i["00080018"]["Value"][0] for i in insts] == [originals[1].SOPInstanceUID]
    # paging across the whole result with get_remaining (limit / offset)
    every = client.search_for_instances(study, limit=4, get_remaining=True)
    assert len(every) == 6

    by_uid = {o.SOPInstanceUID: o for o in originals}
    got = client.retrieve_study(study)
    assert len(got) == 6
    for ds in got:
        _ds_equal(ds, by_uid[ds.SOPInstanceUID])
    got = client.retrieve_series(study, se)
    assert {d.SOPInstanceUID for d in got} == {o.SOPInstanceUID for o in originals[:3]}
    one = client.retrieve_instance(study, se, originals[0].SOPInstanceUID)
    _ds_equal(one, originals[0])
    # transcoded on request: JPEG-LS lossless, pixel values equal
    jls = client.retrieve_instance(
        study, se, originals[0].SOPInstanceUID, media_types=(("application/dicom", JPEGLSLossless),)
    )
    assert jls.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert np.array_equal(jls.pixel_array, originals[0].pixel_array)

    meta = client.retrieve_series_metadata(study, se)
    assert len(meta) == 3
    m = next(x for x in meta if x["00080018"]["Value"][0] == originals[0].SOPInstanceUID)
    assert m["00100020"]["Value"] == ["DW-1"] and m["00280010"]["Value"] == [16]
    pixels = client.retrieve_bulkdata(m["7FE00010"]["BulkDataURI"])
    assert pixels == [originals[0].PixelData]
    study_meta = client.retrieve_study_metadata(study)
    assert len(study_meta) == 6
    frames = client.retrieve_instance_frames(study, se, originals[0].SOPInstanceUID, [1])
    assert frames == [originals[0].PixelData]


def test_frames_of_compressed_multiframe(client: DICOMwebClient) -> None:
    ds = make_ct(rows=8, cols=8, patient_id="DW-2")
    ds.NumberOfFrames = 4
    arr = (np.arange(4 * 64, dtype=np.uint16) * 13 % 4096).reshape(4, 8, 8)
    ds.PixelData = arr.tobytes()
    ds.compress(RLELossless, generate_instance_uid=False)
    client.store_instances([ds])
    study, se, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    # as stored: the frame's RLE fragments
    from pydicom.encaps import generate_frames

    stored = list(generate_frames(ds.PixelData, number_of_frames=4))
    got = client.retrieve_instance_frames(
        study, se, sop, [2, 4], media_types=(("application/octet-stream", "*"),)
    )
    assert got == [stored[1], stored[3]]
    # no preference (type="*/*"): as stored, in the stored syntax's media type
    assert client.retrieve_instance_frames(study, se, sop, [1]) == [stored[0]]
    # uncompressed asked for: decoded native frames
    got = client.retrieve_instance_frames(
        study, se, sop, [3], media_types=(("application/octet-stream", ExplicitVRLittleEndian),)
    )
    assert np.frombuffer(got[0], np.uint16).reshape(8, 8).tolist() == arr[2].tolist()
    # the instance as stored (dicomweb-client asks transfer-syntax=*), and decoded on request
    assert client.retrieve_instance(study, se, sop).file_meta.TransferSyntaxUID == RLELossless
    native = client.retrieve_instance(
        study, se, sop, media_types=(("application/dicom", ExplicitVRLittleEndian),)
    )
    assert native.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(native.pixel_array, arr)


def _raw(url: str, method: str = "GET", **kw) -> requests.Response:  # noqa: ANN003
    return requests.request(method, url, auth=(USER, PASSWORD), timeout=60, **kw)


def _raw_path(base: str, path: str) -> int:
    """Status of a GET with the path sent exactly as written (no client normalisation)."""
    host, port = base.removeprefix("http://").split(":")
    import base64

    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {token}\r\n"
            "Connection: close\r\n\r\n".encode("latin-1")
        )
        head = s.recv(4096).decode("latin-1")
    return int(head.split(" ", 2)[1])


def test_hostile_requests_get_4xx_and_lose_nothing(
    client: DICOMwebClient, served: tuple[Server, str]
) -> None:
    _server, base = served
    keep = make_ct(patient_id="DW-KEEP")
    client.store_instances([keep])
    url = f"{base}/dicom-web/studies/{keep.StudyInstanceUID}/series/{keep.SeriesInstanceUID}"
    before = _raw(
        f"{url}/instances/{keep.SOPInstanceUID}",
        headers={"Accept": "application/dicom; transfer-syntax=*"},
    )
    assert before.status_code == 200

    for path in (
        "/dicom-web/studies/../../etc/passwd",
        "/dicom-web/studies/%2e%2e/%2e%2e/etc/passwd",
        "/dicom-web/studies/1.2.3%00/metadata",
        "/dicom-web/studies/1.2.3;DROP%20TABLE%20study/series",
        "/dicom-web/studies/" + "9" * 70,
        "/dicom-web/studies/1.2.x/series/1.2/instances/1.2/frames/1",
        "/dicom-web/studies/1.2/series/1.2/instances/1.2/bulkdata/..%2f..%2fsecret",
    ):
        assert _raw_path(base, path) == 400, path
    mp = 'multipart/related; type="application/dicom"; boundary=XX'
    stow = f"{base}/dicom-web/studies"
    # a damaged copy of the stored instance (same UIDs), a non-DICOM part, a text part
    damaged = BytesIO()
    keep.save_as(damaged, enforce_file_format=True)
    body = (
        b"".join(
            b"--XX\r\nContent-Type: " + ct + b"\r\n\r\n" + data + b"\r\n"
            for ct, data in (
                (b"application/dicom", damaged.getvalue()[:-50]),
                (b"application/dicom", b"MZ\x90\x00 not dicom"),
                (b"text/plain", b"hello"),
            )
        )
        + b"--XX--\r\n"
    )
    r = _raw(stow, "POST", data=body, headers={"Content-Type": mp})
    assert r.status_code == 409
    failed = r.json()["00081198"]["Value"]
    assert len(failed) == 3 and all(f["00081197"]["Value"][0] == 0xC000 for f in failed)
    # bad boundaries, wrong media types, a body over the limit (streamed, no length)
    assert (
        _raw(stow, "POST", data=body, headers={"Content-Type": mp.replace("XX", "YY")}).status_code
        == 400
    )
    assert (
        _raw(stow, "POST", data=body, headers={"Content-Type": "multipart/related"}).status_code
        == 400
    )
    assert (
        _raw(stow, "POST", data=body, headers={"Content-Type": "application/dicom"}).status_code
        == 415
    )

    def huge() -> Iterator[bytes]:
        yield b"--XX\r\nContent-Type: application/dicom\r\n\r\n"
        for _ in range(STOW_LIMIT // 65536 + 10):
            yield b"\0" * 65536

    assert _raw(stow, "POST", data=huge(), headers={"Content-Type": mp}).status_code == 413
    # the stored instance is unchanged, and searching still works
    after = _raw(
        f"{url}/instances/{keep.SOPInstanceUID}",
        headers={"Accept": "application/dicom; transfer-syntax=*"},
    )
    assert after.content == before.content
    assert len(client.search_for_instances(search_filters={"PatientID": "DW-KEEP"})) == 1
    # without credentials: 401 for every kind of request
    assert requests.get(f"{base}/dicom-web/studies", timeout=30).status_code == 401
    assert (
        requests.post(stow, data=body, headers={"Content-Type": mp}, timeout=30).status_code == 401
    )
    assert dcmread(BytesIO(after.content)).SOPInstanceUID == keep.SOPInstanceUID
