"""WADO-URI at /wado (PS3.18 §9; SPEC E2, E3) through create_app(archive): image and DICOM
content types, transfer syntaxes, anonymize, parameters, errors, and the authentication
rules (Basic, URL credentials behind wado_url_credentials, the dedicated wado_user)."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import dcmread
from pydicom.uid import JPEGLSLossless, RLELossless, generate_uid

from pacsbox.archive.users import UserDirectory
from pacsbox.web.app import create_app
from tests.helpers import PYDICOM_TEST_FILES, make_ct
from tests.unit.test_render import ramp, ref_linear, reference

VIEWER = ("vera", "viewer-pass-1")
WADO = ("his", "his-link-pass-1")
NOVIEW = ("uma", "upload-pass-1")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


AUTH = basic(*VIEWER)


def _client(archive, **overrides) -> TestClient:  # noqa: ANN001
    users = UserDirectory(archive.engine)
    if users.get(VIEWER[0]) is None:
        users.add(VIEWER[0], "viewer", VIEWER[1])
        users.add(WADO[0], "viewer", WADO[1])
        users.add_role("uploader", "upload")
        users.add(NOVIEW[0], "uploader", NOVIEW[1])
    c = TestClient(create_app(archive, archive.settings.model_copy(update=overrides)))
    c.archive = archive  # type: ignore[attr-defined]
    return c


@pytest.fixture
def client(sqlite_archive) -> Iterator[TestClient]:  # noqa: ANN001
    with _client(sqlite_archive) as c:
        yield c


def store(c: TestClient, ds, tmp_path: Path) -> Path:  # noqa: ANN001
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    c.archive.ingest.store_file(path)  # type: ignore[attr-defined]
    return path


def wado(ds, **params: str) -> str:  # noqa: ANN001
    query = {
        "requestType": "WADO",
        "studyUID": ds.StudyInstanceUID,
        "seriesUID": ds.SeriesInstanceUID,
        "objectUID": ds.SOPInstanceUID,
        **params,
    }
    return "/wado?" + "&".join(f"{k}={v}" for k, v in query.items())


def gray(arr: np.ndarray, **attrs: object):  # noqa: ANN201
    ds = make_ct(rows=arr.shape[-2], cols=arr.shape[-1])
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 0
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    ds.PixelData = arr.astype(np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def image(content: bytes) -> Image.Image:
    return Image.open(io.BytesIO(content))


def test_images_with_window_frame_size_region(client: TestClient, tmp_path: Path) -> None:
    arr = ramp(32, 64)
    ds = gray(arr, WindowCenter=40, WindowWidth=400)
    store(client, ds, tmp_path)
    r = client.get(wado(ds), headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    r = client.get(
        wado(ds, contentType="image/png", windowCenter="1000", windowWidth="500"), headers=AUTH
    )
    want = reference(arr, lambda x: ref_linear(x, 1000, 500))
    assert np.array_equal(np.asarray(image(r.content)), want)
    r = client.get(wado(ds, contentType="image/png", rows="16"), headers=AUTH)
    assert image(r.content).size == (32, 16)
    r = client.get(wado(ds, contentType="image/png", columns="16", rows="16"), headers=AUTH)
    assert image(r.content).size == (16, 8)
    r = client.get(wado(ds, contentType="image/png", region="0.5,0,1,0.5"), headers=AUTH)
    full = reference(arr, lambda x: ref_linear(x, 40, 400))
    assert np.array_equal(np.asarray(image(r.content)), full[0:16, 32:64])
    r = client.get(wado(ds, rows="99999999"), headers=AUTH)  # capped, not refused
    assert r.status_code == 200 and image(r.content).size == (4096, 2048)
    low = client.get(wado(ds, imageQuality="5"), headers=AUTH).content
    high = client.get(wado(ds, imageQuality="100"), headers=AUTH).content
    assert len(low) < len(high)
    # charset and aetitle are accepted (and ignored)
    r = client.get(wado(ds, charset="ISO_IR 192", aetitle="PACSBOX"), headers=AUTH)
    assert r.status_code == 200
    frames = np.stack([np.full((4, 4), v) for v in (10, 20)]).astype(np.uint16)
    mf = gray(frames, WindowCenter=15, WindowWidth=5)
    store(client, mf, tmp_path)
    r = client.get(wado(mf, contentType="image/png", frameNumber="2"), headers=AUTH)
    assert (np.asarray(image(r.content)) == 255).all()  # 20 is above the window
    r = client.get(wado(mf, contentType="image/png", frameNumber="1"), headers=AUTH)
    assert (np.asarray(image(r.content)) == 0).all()
    assert client.get(wado(mf, frameNumber="3"), headers=AUTH).status_code == 400


BAD_PARAMS: tuple[dict[str, str], ...] = (
    {"requestType": "WADOX"},
    {"studyUID": ""},
    {"objectUID": "1.2.abc"},
    {"frameNumber": "0"},
    {"frameNumber": "x"},
    {"rows": "0"},
    {"rows": "-5"},
    {"columns": "abc"},
    {"region": "0,0,2,1"},
    {"region": "0.5,0.5,0.1,1"},
    {"windowCenter": "40"},
    {"windowCenter": "a", "windowWidth": "400"},
    {"windowCenter": "40", "windowWidth": "0"},
    {"imageQuality": "101"},
    {"anonymize": "yes"},  # with an image content type
    {"anonymize": "maybe", "contentType": "application/dicom"},
    {"presentationUID": "1.2.3"},
    {"contentType": "application/dicom", "transferSyntax": "1.2.x"},
)


def test_bad_parameters_are_400(client: TestClient, tmp_path: Path) -> None:
    ds = gray(ramp(8, 8))
    store(client, ds, tmp_path)
    for params in BAD_PARAMS:
        r = client.get(wado(ds, **params), headers=AUTH)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"]["status"] == 400


def test_missing_parameters_and_unknown_objects(client: TestClient, tmp_path: Path) -> None:
    ds = gray(ramp(8, 8))
    store(client, ds, tmp_path)
    assert client.get("/wado?requestType=WADO", headers=AUTH).status_code == 400
    url = f"/wado?requestType=WADO&studyUID={ds.StudyInstanceUID}&objectUID={ds.SOPInstanceUID}"
    assert client.get(url, headers=AUTH).status_code == 400  # seriesUID missing
    assert client.get(url + "&seriesUID=1.2&seriesUID=1.3", headers=AUTH).status_code == 400
    other = generate_uid()
    assert client.get(wado(ds, objectUID=other), headers=AUTH).status_code == 404
    assert client.get(wado(ds, seriesUID=other), headers=AUTH).status_code == 404
    assert client.get(wado(ds, studyUID=other), headers=AUTH).status_code == 404


def test_application_dicom_transfer_syntaxes(client: TestClient, tmp_path: Path) -> None:
    ds = gray(ramp(16, 16))
    ds.compress(RLELossless, generate_instance_uid=False)
    path = store(client, ds, tmp_path)
    # default: Explicit VR Little Endian (PS3.18 §9), decompressed, same pixels and UIDs
    r = client.get(wado(ds, contentType="application/dicom"), headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    got = dcmread(io.BytesIO(r.content))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert got.SOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(got.pixel_array, dcmread(path).pixel_array)
    # as stored: the stored file
    stored_file = next(Path(client.archive.store.root).rglob("*.dcm"))  # type: ignore[attr-defined]
    for ts in ("*", str(RLELossless)):
        r = client.get(wado(ds, contentType="application/dicom", transferSyntax=ts), headers=AUTH)
        assert r.content == stored_file.read_bytes(), ts
    # transcoded losslessly
    r = client.get(
        wado(ds, contentType="application/dicom", transferSyntax=str(JPEGLSLossless)),
        headers=AUTH,
    )
    got = dcmread(io.BytesIO(r.content))
    assert got.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert np.array_equal(got.pixel_array, dcmread(path).pixel_array)
    # lossy JPEG cannot be made from lossless data: 406
    r = client.get(
        wado(ds, contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.4.50"),
        headers=AUTH,
    )
    assert r.status_code == 406


def test_content_type_lists_and_non_image_objects(client: TestClient, tmp_path: Path) -> None:
    sr = dcmread(PYDICOM_TEST_FILES / "test-SR.dcm")
    store(client, sr, tmp_path)
    r = client.get(wado(sr), headers=AUTH)  # non-image default: application/dicom
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    assert client.get(wado(sr, contentType="image/jpeg"), headers=AUTH).status_code == 406
    r = client.get(wado(sr, contentType="image/jpeg,application/dicom"), headers=AUTH)
    assert r.headers["content-type"] == "application/dicom"
    ds = gray(ramp(8, 8))
    store(client, ds, tmp_path)
    assert client.get(wado(ds, contentType="*/*"), headers=AUTH).headers["content-type"] == (
        "image/jpeg"
    )
    r = client.get(wado(ds, contentType="image/png,image/jpeg"), headers=AUTH)
    assert r.headers["content-type"] == "image/png"
    assert client.get(wado(ds, contentType="text/html"), headers=AUTH).status_code == 406


def test_anonymize(client: TestClient, tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    sources = []
    for i in range(2):
        ds = make_ct(study, series, instance_number=i + 1, patient_name="Doe^Jane")
        ds.InstitutionName = "General Hospital"
        ds.add_new(0x00091010, "LO", "private")
        store(client, ds, tmp_path)
        sources.append(ds)
    outs = []
    for ds in sources:
        r = client.get(wado(ds, contentType="application/dicom", anonymize="yes"), headers=AUTH)
        assert r.status_code == 200, r.text
        outs.append(dcmread(io.BytesIO(r.content)))
    a, b = outs
    assert a.PatientName == "" and a.PatientID == "" and "InstitutionName" not in a
    assert 0x00091010 not in a and a.PatientIdentityRemoved == "YES"
    assert a.StudyInstanceUID == b.StudyInstanceUID != study  # consistent, replaced
    assert a.SOPInstanceUID != sources[0].SOPInstanceUID
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    assert a.PixelData == sources[0].PixelData
    burned = make_ct()
    burned.BurnedInAnnotation = "YES"
    store(client, burned, tmp_path)
    r = client.get(wado(burned, contentType="application/dicom", anonymize="yes"), headers=AUTH)
    assert r.status_code == 406


def test_authentication_rules(sqlite_archive, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    ds = gray(ramp(8, 8))
    with _client(sqlite_archive) as c:
        store(c, ds, tmp_path)
        assert c.get(wado(ds)).status_code == 401
        assert c.get(wado(ds), headers=basic(*NOVIEW)).status_code == 403
        # URL credentials are off by default, even when correct
        r = c.get(wado(ds, username=VIEWER[0], password=VIEWER[1]))
        assert r.status_code == 401 and "wado_url_credentials" in r.json()["error"]["message"]
    with _client(sqlite_archive, wado_url_credentials=True) as c:
        with caplog.at_level(logging.INFO, logger="pacsbox.http"):
            r = c.get(wado(ds, username=VIEWER[0], password=VIEWER[1]))
        assert r.status_code == 200
        logged = "\n".join(rec.getMessage() for rec in caplog.records)
        assert "password=***" in logged and VIEWER[1] not in logged
        assert c.get(wado(ds, username=VIEWER[0], password="wrong-one")).status_code == 401
    with _client(sqlite_archive, wado_url_credentials=True, wado_user=WADO[0]) as c:
        # only the WADO account may put its password in a URL
        assert c.get(wado(ds, username=VIEWER[0], password=VIEWER[1])).status_code == 401
        assert c.get(wado(ds, username=WADO[0], password=WADO[1])).status_code == 200
        assert c.get(wado(ds), headers=basic(*WADO)).status_code == 200
        # ... and that account reads through /wado only
        for path in ("/api/studies", f"/dicom-web/studies/{ds.StudyInstanceUID}/thumbnail"):
            r = c.get(path, headers=basic(*WADO))
            assert r.status_code == 403, path
        assert c.get("/api/studies", headers=AUTH).status_code == 200


def test_native_storage_format(sqlite_settings, tmp_path: Path) -> None:  # noqa: ANN001
    """Bare data sets (storage_format = native) come back as Part-10 files and render."""
    from pacsbox.app import build_archive
    from tests.helpers import dataset_bytes

    archive = build_archive(sqlite_settings.model_copy(update={"storage_format": "native"}))
    try:
        with _client(archive) as c:
            arr = ramp(8, 8)
            ds = gray(arr, WindowCenter=1000, WindowWidth=500)
            path = store(c, ds, tmp_path)
            stored = next(Path(archive.store.root).rglob("*.dcm"))
            assert stored.read_bytes() == dataset_bytes(path)  # no file meta on disk
            for ts in ("*", None):
                params = {"contentType": "application/dicom"}
                if ts:
                    params["transferSyntax"] = ts
                r = c.get(wado(ds, **params), headers=AUTH)
                assert r.status_code == 200
                assert r.content[128:132] == b"DICM"
                got = dcmread(io.BytesIO(r.content))
                assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
                assert got.SOPInstanceUID == ds.SOPInstanceUID
                assert np.array_equal(got.pixel_array, arr)
            r = c.get(wado(ds, contentType="image/png"), headers=AUTH)
            want = reference(arr, lambda x: ref_linear(x, 1000, 500))
            assert np.array_equal(np.asarray(image(r.content)), want)
    finally:
        archive.engine.dispose()
