"""WADO-RS rendered and thumbnail resources (PS3.18 §10.4.1.1.3–.4, §8.3.5) through
create_app(archive): pixel values against numpy references, frames, colour, viewport, media
type negotiation, hostile parameters, non-image objects, privileges and audit."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import dcmread
from pydicom.pixels import convert_color_space, pixel_array
from pydicom.uid import generate_uid

from pacsbox.archive import render
from pacsbox.archive.users import UserDirectory
from pacsbox.web.app import create_app
from tests.helpers import PYDICOM_TEST_FILES, make_ct
from tests.unit.test_render import ramp, ref_linear, ref_sigmoid, reference

VIEWER = ("vera", "viewer-pass-1")
NOVIEW = ("uma", "upload-pass-1")
WADO = ("his", "his-link-pass-1")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


AUTH = basic(*VIEWER)


def _users(archive) -> None:  # noqa: ANN001
    users = UserDirectory(archive.engine)
    users.add(VIEWER[0], "viewer", VIEWER[1])
    users.add_role("uploader", "upload")
    users.add(NOVIEW[0], "uploader", NOVIEW[1])
    users.add(WADO[0], "viewer", WADO[1])


@pytest.fixture
def client(sqlite_archive) -> Iterator[TestClient]:  # noqa: ANN001
    _users(sqlite_archive)
    settings = sqlite_archive.settings.model_copy(update={"wado_user": WADO[0]})
    with TestClient(create_app(sqlite_archive, settings)) as c:
        c.archive = sqlite_archive  # type: ignore[attr-defined]
        yield c


def store(c: TestClient, ds_or_path, tmp_path: Path) -> Path:  # noqa: ANN001
    if isinstance(ds_or_path, Path):
        path = ds_or_path
    else:
        path = tmp_path / f"{ds_or_path.SOPInstanceUID}.dcm"
        ds_or_path.save_as(path, enforce_file_format=True)
    c.archive.ingest.store_file(path)  # type: ignore[attr-defined]
    return path


def url(ds, tail: str = "rendered") -> str:  # noqa: ANN001
    return (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/{tail}"
    )


def decode(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


def gray(arr: np.ndarray, **attrs: object):  # noqa: ANN201
    ds = make_ct(rows=arr.shape[-2], cols=arr.shape[-1])
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 0
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    ds.PixelData = arr.astype(np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def test_rendered_instance_window_level_exact(client: TestClient, tmp_path: Path) -> None:
    arr = ramp()
    ds = gray(arr, RescaleIntercept=-1024, RescaleSlope=1, WindowCenter=40, WindowWidth=400)
    store(client, ds, tmp_path)
    r = client.get(url(ds), headers={**AUTH, "Accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "no-store"
    assert np.array_equal(
        decode(r.content), reference(arr, lambda x: ref_linear(x, 40, 400), 1, -1024)
    )
    # the request's window wins, with its VOI LUT function
    r = client.get(url(ds) + "?window=500,1000,sigmoid&accept=image/png", headers=AUTH)
    want = reference(arr, lambda x: ref_sigmoid(x, 500, 1000), 1, -1024)
    assert np.array_equal(decode(r.content), want)
    # default media type: JPEG of the same size, close to the PNG
    r = client.get(url(ds), headers=AUTH)
    assert r.headers["content-type"] == "image/jpeg"
    jpeg = decode(r.content).astype(int)
    exact = reference(arr, lambda x: ref_linear(x, 40, 400), 1, -1024).astype(int)
    assert jpeg.shape == arr.shape and np.abs(jpeg - exact).mean() < 2


def test_frames_rendered_selects_frame(client: TestClient, tmp_path: Path) -> None:
    frames = np.stack([np.full((8, 12), v) for v in (100, 200, 300)]).astype(np.uint16)
    ds = gray(frames, WindowCenter=200, WindowWidth=201)
    store(client, ds, tmp_path)
    for number, value in ((1, 100), (2, 200), (3, 300)):
        r = client.get(
            url(ds, f"frames/{number}/rendered"), headers={**AUTH, "Accept": "image/png"}
        )
        assert r.status_code == 200
        assert (
            decode(r.content) == reference(np.array([value]), lambda x: ref_linear(x, 200, 201))[0]
        ).all()
    assert client.get(url(ds, "frames/4/rendered"), headers=AUTH).status_code == 404
    assert client.get(url(ds, "frames/0/rendered"), headers=AUTH).status_code == 400
    assert client.get(url(ds, "frames/1,2/rendered"), headers=AUTH).status_code == 400
    assert client.get(url(ds, "frames/x/rendered"), headers=AUTH).status_code == 400


def test_colour_ybr_jpeg_and_palette(client: TestClient, tmp_path: Path) -> None:
    for name in ("SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_jpeg_dcmtk.dcm"):
        path = PYDICOM_TEST_FILES / name
        ds = dcmread(path, stop_before_pixels=True)
        store(client, path, tmp_path)
        r = client.get(url(ds) + "?accept=image/png", headers=AUTH)
        assert r.status_code == 200
        want = convert_color_space(pixel_array(path, raw=True), "YBR_FULL", "RGB")
        assert np.array_equal(decode(r.content), want), name
    path = PYDICOM_TEST_FILES / "examples_palette.dcm"
    ds = dcmread(path)
    store(client, path, tmp_path)
    got = decode(client.get(url(ds) + "?accept=image/png", headers=AUTH).content)
    assert got.shape == (ds.Rows, ds.Columns, 3) and len(np.unique(got.reshape(-1, 3), axis=0)) > 10


def test_viewport_quality_and_negotiation(client: TestClient, tmp_path: Path) -> None:
    ds = gray(ramp(64, 128), WindowCenter=1500, WindowWidth=3000)
    store(client, ds, tmp_path)
    r = client.get(url(ds) + "?viewport=32,32", headers=AUTH)
    assert Image.open(io.BytesIO(r.content)).size == (32, 16)  # aspect kept
    r = client.get(url(ds) + "?viewport=99999999,99999999", headers=AUTH)
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (4096, 2048)
    low = client.get(url(ds) + "?quality=5", headers=AUTH).content
    high = client.get(url(ds) + "?quality=100", headers=AUTH).content
    assert len(low) < len(high)
    cases = {
        "image/png": "image/png",
        "image/gif;q=0.5, image/png;q=0.9": "image/png",
        "image/*": "image/jpeg",
        "*/*": "image/jpeg",
        "image/gif": "image/gif",
        "text/html, image/png;q=0.1": "image/png",
    }
    for accept, want in cases.items():
        r = client.get(url(ds), headers={**AUTH, "Accept": accept})
        assert r.headers["content-type"] == want, accept
    r = client.get(url(ds), headers={**AUTH, "Accept": "application/dicom"})
    assert r.status_code == 406
    # the accept query parameter wins over the header (PS3.18 §8.3.3.1)
    r = client.get(url(ds) + "?accept=image/png", headers={**AUTH, "Accept": "image/jpeg"})
    assert r.headers["content-type"] == "image/png"


BAD_QUERIES = (
    "window=abc",
    "window=40",
    "window=40,0",
    "window=40,400,cubic",
    "viewport=-1,5",
    "viewport=0,0",
    "viewport=10,10,999999,0,5,5",
    "quality=0",
    "quality=abc",
    "quality=1000",
)


def test_bad_parameters_are_400(client: TestClient, tmp_path: Path) -> None:
    ds = gray(ramp(8, 8))
    store(client, ds, tmp_path)
    for query in BAD_QUERIES:
        r = client.get(url(ds) + "?" + query, headers=AUTH)
        assert r.status_code == 400, (query, r.text)
        assert r.json()["error"]["status"] == 400


def test_unknown_and_malformed_uids(client: TestClient, tmp_path: Path) -> None:
    ds = gray(ramp(8, 8))
    store(client, ds, tmp_path)
    other = generate_uid()
    base = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    assert client.get(f"{base}/instances/{other}/rendered", headers=AUTH).status_code == 404
    wrong_series = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{other}"
    r = client.get(f"{wrong_series}/instances/{ds.SOPInstanceUID}/rendered", headers=AUTH)
    assert r.status_code == 404
    assert client.get(f"/dicom-web/studies/{other}/thumbnail", headers=AUTH).status_code == 404
    for bad in ("1.2.abc", "1..2", "x" * 80, "1.2.3'--"):
        r = client.get(f"{base}/instances/{bad}/rendered", headers=AUTH)
        assert r.status_code == 400, bad


def test_non_image_objects_are_406(client: TestClient, tmp_path: Path) -> None:
    sr_path = PYDICOM_TEST_FILES / "test-SR.dcm"
    sr = dcmread(sr_path, stop_before_pixels=True)
    store(client, sr_path, tmp_path)
    assert client.get(url(sr), headers=AUTH).status_code == 406
    assert client.get(url(sr, "thumbnail"), headers=AUTH).status_code == 406
    thumb = f"/dicom-web/studies/{sr.StudyInstanceUID}/series/{sr.SeriesInstanceUID}/thumbnail"
    assert client.get(thumb, headers=AUTH).status_code == 406


def test_thumbnails_use_the_middle_image(client: TestClient, tmp_path: Path) -> None:
    study = generate_uid()
    first_series, second_series = generate_uid(), generate_uid()
    # series 2 is stored first but series 1 (lower Series Number) represents the study
    for number, series, base_value in ((2, second_series, 3000), (1, first_series, 0)):
        for i in range(5):
            ds = make_ct(study, series, instance_number=i + 1, rows=8, cols=8)
            ds.SeriesNumber = number
            ds.BitsStored, ds.HighBit = 16, 15
            ds.WindowCenter, ds.WindowWidth = 2500, 5001
            ds.PixelData = np.full((8, 8), base_value + 100 * (i + 1), np.uint16).tobytes()
            store(client, ds, tmp_path)

    def value(path: str, query: str = "accept=image/png") -> tuple[int, tuple[int, int]]:
        r = client.get(f"{path}?{query}", headers=AUTH)
        assert r.status_code == 200, r.text
        img = Image.open(io.BytesIO(r.content))
        return int(np.asarray(img)[0, 0]), img.size

    expect = lambda v: int(reference(np.array([v]), lambda x: ref_linear(x, 2500, 5001))[0])  # noqa: E731
    got, size = value(f"/dicom-web/studies/{study}/thumbnail")
    assert got == expect(300) and size == (128, 128)  # instance 3 of 5 in series 1
    got, _ = value(f"/dicom-web/studies/{study}/series/{second_series}/thumbnail")
    assert got == expect(3300)
    _, size = value(f"/dicom-web/studies/{study}/thumbnail", "viewport=64,32")
    assert size == (32, 32)


def test_privileges_wado_user_and_audit(client: TestClient, tmp_path: Path) -> None:
    ds = gray(ramp(8, 8))
    store(client, ds, tmp_path)
    assert client.get(url(ds)).status_code == 401
    assert client.get(url(ds), headers=basic(*NOVIEW)).status_code == 403
    r = client.get(url(ds), headers=basic(*WADO))
    assert r.status_code == 403 and "/wado" in r.json()["error"]["message"]
    for _ in range(3):
        assert client.get(url(ds), headers=AUTH).status_code == 200
    from pacsbox.archive.audit import AuditLog

    engine = client.archive.engine  # type: ignore[attr-defined]
    _total, events = AuditLog(engine).query(action="read", study_uid=ds.StudyInstanceUID)
    mine = [e for e in events if e.username == VIEWER[0]]
    assert len(mine) == 1 and mine[0].detail == "rendered"


def test_lookup_on_every_database(archive, tmp_path: Path) -> None:  # noqa: ANN001
    """find_instance / representative_instance run on SQLite, PostgreSQL and MariaDB."""
    study, series = generate_uid(), generate_uid()
    sops = []
    for i in range(4):
        ds = make_ct(study, series, instance_number=i + 1, rows=8, cols=8)
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        archive.ingest.store_file(path)
        sops.append(ds.SOPInstanceUID)
    found = render.find_instance(archive.engine, archive.store, study, series, sops[2])
    assert found is not None and found.path.is_file() and found.is_image
    assert (
        render.find_instance(archive.engine, archive.store, generate_uid(), None, sops[2]) is None
    )
    exists, image = render.representative_instance(archive.engine, archive.store, study)
    assert exists and image is not None and image.sop_instance_uid == sops[1]  # (4-1)//2
    out = render.render(image.path, image.transfer_syntax_uid, render.RenderParams())
    assert out.data[:2] == b"\xff\xd8"


def _parts(body: bytes, ctype: str) -> list[tuple[str, bytes]]:
    boundary = ctype.split("boundary=")[1].strip('"')
    out = []
    for chunk in body.split(f"--{boundary}".encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        out.append((head.decode().strip(), data[:-2]))
    return out


def test_study_and_series_rendered_multipart(client: TestClient, tmp_path: Path) -> None:
    study, series_a, series_b = generate_uid(), generate_uid(), generate_uid()
    values = {}
    for series, number, count in ((series_b, 2, 2), (series_a, 1, 3)):
        for i in range(count):
            ds = make_ct(study, series, instance_number=i + 1, rows=4, cols=6)
            ds.SeriesNumber = number
            ds.BitsStored, ds.HighBit = 16, 15
            ds.WindowCenter, ds.WindowWidth = 500, 1001
            value = 100 * number + 10 * i
            ds.PixelData = np.full((4, 6), value, np.uint16).tobytes()
            values[(number, i)] = value
            store(client, ds, tmp_path)
    store(client, PYDICOM_TEST_FILES / "test-SR.dcm", tmp_path)  # other study: ignored
    r = client.get(f"/dicom-web/studies/{study}/rendered?accept=image/png", headers=AUTH)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith('multipart/related; type="image/png"')
    parts = _parts(r.content, r.headers["content-type"])
    assert [h for h, _ in parts] == ["Content-Type: image/png"] * 5
    got = [int(np.asarray(Image.open(io.BytesIO(d)))[0, 0]) for _, d in parts]
    order = [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]  # Series Number, then Instance Number
    want = [
        int(reference(np.array([values[k]]), lambda x: ref_linear(x, 500, 1001))[0]) for k in order
    ]
    assert got == want
    r = client.get(f"/dicom-web/studies/{study}/series/{series_b}/rendered", headers=AUTH)
    parts = _parts(r.content, r.headers["content-type"])
    assert len(parts) == 2 and all(d[:2] == b"\xff\xd8" for _, d in parts)
    assert (
        client.get(f"/dicom-web/studies/{generate_uid()}/rendered", headers=AUTH).status_code == 404
    )
    r = client.get(f"/dicom-web/studies/{study}/rendered?window=x", headers=AUTH)
    assert r.status_code == 400
    sr = dcmread(PYDICOM_TEST_FILES / "test-SR.dcm", stop_before_pixels=True)
    r = client.get(f"/dicom-web/studies/{sr.StudyInstanceUID}/rendered", headers=AUTH)
    assert r.status_code == 406


# -- video instances as video/mp4 (SPEC E5 video playback) ----------------------------------
def test_video_instance_rendered_as_mp4(client: TestClient, tmp_path: Path) -> None:
    import av

    from pacsbox.archive.video import cache_root_for
    from pacsbox.sendtopacs.convert import Converter, ConvertOptions
    from tests.unit.test_sendtopacs_convert import _video, patient

    clip = tmp_path / "clip.mp4"
    _video(clip, "libx264", opts={"profile": "high"}, n=20)
    (item,) = Converter(patient(), ConvertOptions()).convert(clip)
    stored = item.save(tmp_path / "dicom")
    ds = dcmread(stored)
    store(client, stored, tmp_path)
    r = client.get(url(ds), headers={**AUTH, "Accept": "*/*"})  # what a <video> element sends
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4" and r.headers["accept-ranges"] == "bytes"
    with av.open(io.BytesIO(r.content)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert len(list(c.decode(video=0))) == 20
    ranged = client.get(url(ds), headers={**AUTH, "Range": "bytes=0-99"})
    assert ranged.status_code == 206 and ranged.content == r.content[:100]
    assert client.get(url(ds) + "?accept=video/mp4", headers=AUTH).content == r.content
    # an image asked for: a picture of the video (decoded with PyAV); thumbnails too
    jpeg = client.get(url(ds), headers={**AUTH, "Accept": "image/jpeg"})
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    assert decode(jpeg.content).shape == (240, 320, 3)
    tenth = client.get(url(ds, "frames/10/rendered"), headers=AUTH)
    assert tenth.status_code == 200 and tenth.content != jpeg.content
    assert client.get(url(ds, "frames/21/rendered"), headers=AUTH).status_code == 404
    series_thumb = client.get(
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/thumbnail",
        headers=AUTH,
    )
    assert series_thumb.status_code == 200
    assert client.get(url(ds), headers=basic(*NOVIEW)).status_code == 403
    cached = list(cache_root_for(client.archive.store.root).rglob("*.mp4"))  # type: ignore[attr-defined]
    assert len(cached) == 1
    # deleting the study removes the browser copy with the stored file
    from pacsbox.archive.deletion import ArchiveDeletion

    ArchiveDeletion(client.archive.engine, client.archive.store).delete_study(  # type: ignore[attr-defined]
        ds.StudyInstanceUID, user="test", client="127.0.0.1"
    )
    assert not cached[0].exists()
