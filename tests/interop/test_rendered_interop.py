"""Rendered resources and WADO-URI against a real ``pacsbox serve`` (PS3.18 §10.4.1.1.3,
§9): the ``dicomweb-client`` package retrieves rendered instances, frames and a rendered
series; a HIS-style WADO-URI link with URL credentials works for the configured WADO account,
and the server's request log never shows the password."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.uid import generate_uid

from tests.helpers import Server, free_port, make_ct, run_dcmtk, server_env, wait_for_log
from tests.unit.test_render import ref_linear, reference

pytestmark = [pytest.mark.interop, pytest.mark.xdist_group("rendered_interop")]

USER, PASSWORD = "radview", "viewer-pass-9"
HIS, HIS_PASSWORD = "his-link", "his-link-secret-7"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, list]]:
    tmp = tmp_path_factory.mktemp("rendered")
    data = tmp / "srv" / "data"
    data.mkdir(parents=True)
    http_port = free_port()
    env = server_env(
        data,
        free_port(),
        None,
        PACSBOX_HTTP_PORT=str(http_port),
        PACSBOX_PERMISSIVE_AES="true",
        PACSBOX_PERMISSIVE_AES_ENABLED="true",
        PACSBOX_WADO_USER=HIS,
        PACSBOX_WADO_URL_CREDENTIALS="true",
    )
    server = Server(data, int(env["PACSBOX_DICOM_PORT"]), env)
    for name, pw in ((USER, PASSWORD), (HIS, HIS_PASSWORD)):
        res = server.cli("user", "add", name, "--role", "viewer", "--password", pw)
        assert res.returncode == 0, res.stdout + res.stderr
    # a 3-instance series; instance 2 has three frames
    study, series = generate_uid(), generate_uid()
    datasets, files = [], []
    for i in range(3):
        ds = make_ct(study, series, instance_number=i + 1, rows=12, cols=20)
        ds.BitsStored, ds.HighBit = 16, 15
        ds.WindowCenter, ds.WindowWidth = 1000, 1500
        frames = 3 if i == 1 else 1
        ds.NumberOfFrames = frames
        values = np.arange(frames * 12 * 20, dtype=np.uint16).reshape(frames, 12, 20) * 7
        values += 300 * i
        ds.PixelData = values.tobytes()
        path = tmp / f"i{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        datasets.append((ds, values))
        files.append(str(path))
    server.start()
    try:
        res = run_dcmtk(
            ["/usr/bin/storescu", "-aec", "PACSBOX", "127.0.0.1", str(server.port), *files]
        )
        assert res.returncode == 0, res.stderr
        yield server, f"http://127.0.0.1:{http_port}", datasets
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(served: tuple[Server, str, list]) -> DICOMwebClient:
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    return DICOMwebClient(url=served[1] + "/dicom-web", session=session, timeout=60)


def _want(values: np.ndarray) -> np.ndarray:
    return reference(values, lambda x: ref_linear(x, 1000, 1500))


def test_dicomweb_client_rendered_instance_and_frames(
    client: DICOMwebClient, served: tuple[Server, str, list]
) -> None:
    datasets = served[2]
    ds, values = datasets[0]
    png = client.retrieve_instance_rendered(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, media_types=("image/png",)
    )
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), _want(values[0]))
    ds, values = datasets[1]
    for number in (1, 3):
        png = client.retrieve_instance_frames_rendered(
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
            frame_numbers=[number],
            media_types=("image/png",),
        )
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), _want(values[number - 1]))
    jpeg = client.retrieve_instance_rendered(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        media_types=("image/jpeg",),
        params={"viewport": "10,10", "quality": "80"},
    )
    assert Image.open(io.BytesIO(jpeg)).size == (10, 6)


def test_dicomweb_client_rendered_series_is_multipart(
    client: DICOMwebClient, served: tuple[Server, str, list]
) -> None:
    ds = served[2][0][0]
    body = client.retrieve_series_rendered(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    parts = [p for p in body.split(b"\r\n--") if b"Content-Type: image/jpeg" in p[:200]]
    assert len(parts) == 3
    for part in parts:
        image = part.split(b"\r\n\r\n", 1)[1]
        assert Image.open(io.BytesIO(image)).size == (20, 12)


def test_wado_uri_link_with_url_credentials(served: tuple[Server, str, list]) -> None:
    server, base, datasets = served
    ds, values = datasets[2]
    link = (
        f"{base}/wado?requestType=WADO&studyUID={ds.StudyInstanceUID}"
        f"&seriesUID={ds.SeriesInstanceUID}&objectUID={ds.SOPInstanceUID}&contentType=image/png"
        f"&username={HIS}&password={HIS_PASSWORD}"
    )
    r = requests.get(link, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), _want(values[0]))
    # a personal account may not put its password in a URL when wado_user is set
    r = requests.get(link.replace(HIS, USER).replace(HIS_PASSWORD, PASSWORD), timeout=30)
    assert r.status_code == 401
    # the WADO account is confined to /wado
    r = requests.get(f"{base}/dicom-web/studies", auth=(HIS, HIS_PASSWORD), timeout=30)
    assert r.status_code == 403
    log = wait_for_log(server, "GET /wado")
    assert "password=***" in log and HIS_PASSWORD not in log and PASSWORD not in log
