"""Share links in the browser (SPEC E7): an administrator creates a link through the API, a
fresh browser context (no login, no cookies) opens it, sees the study's images, browses them
and downloads the zip; once revoked the same link shows the 404 page."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.e2e.util import shot
from tests.helpers import make_ct

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]


SIZE = 192


def phantom_study(folder: Path, n_series: int = 2, per_series: int = 5) -> list[Path]:
    """A small CT-like study (body ellipse, bone ring, lungs that change along the series,
    12-bit with Rescale Intercept -1024), so the page and its screenshot show a CT."""
    folder.mkdir(parents=True, exist_ok=True)
    study, paths = generate_uid(), []
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    rng = np.random.default_rng(3)
    for s in range(n_series):
        series = generate_uid()
        for i in range(per_series):
            hu = np.full((SIZE, SIZE), -1000.0)
            body = ((x - 0.5) / 0.42) ** 2 + ((y - 0.5) / 0.3) ** 2 <= 1
            hu[body] = 40.0
            hu[body & (((x - 0.5) / 0.39) ** 2 + ((y - 0.5) / 0.27) ** 2 >= 1)] = 700.0
            r = 0.08 + 0.02 * i
            for cx in (0.36, 0.64):
                hu[((x - cx) / r) ** 2 + ((y - 0.48) / (1.6 * r)) ** 2 <= 1] = -800.0
            hu += rng.normal(0, 8, hu.shape)
            ds = make_ct(
                study,
                series,
                instance_number=i + 1,
                rows=SIZE,
                cols=SIZE,
                patient_name="Share^Sam",
                patient_id="SH1",
            )
            ds.SeriesNumber = s + 1
            ds.SeriesDescription = ("Chest", "Chest bone")[s % 2]
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
            ds.WindowCenter, ds.WindowWidth = (40, -600)[s % 2], (400, 1500)[s % 2]
            ds.PixelData = np.clip(hu + 1024, 0, 4095).astype(np.uint16).tobytes()
            path = folder / f"s{s}_i{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def _loaded(page: Any, selector: str) -> bool:
    return page.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0")


def test_share_link_in_a_fresh_browser(pacs: Any, new_page: Any, tmp_path: Path) -> None:
    paths = phantom_study(tmp_path / "study")
    study = pacs.store(paths)["results"][0]["study_instance_uid"]
    r = pacs.api.post(f"/api/studies/{study}/shares", json={"valid_days": 7, "note": "e2e"})
    assert r.status_code == 201, r.text
    link = r.json()
    assert link["url"].startswith(pacs.url + "/share/")

    page = new_page(accept_downloads=True)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    response = page.goto(link["url"])
    assert response is not None and response.status == 200
    assert page.context.cookies() == []  # nobody logged in: the token alone opens it
    assert page.inner_text("header h1") == "Share Sam"
    assert "SH1" in page.inner_text("header")
    page.wait_for_function(
        "() => [...document.querySelectorAll('nav img')].length === 2 && "
        "[...document.querySelectorAll('nav img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    page.wait_for_function(
        "() => { const v = document.getElementById('view');"
        " return v.complete && v.naturalWidth > 0; }"
    )
    assert _loaded(page, "#view")
    first = page.get_attribute("#view", "src")
    counter = page.inner_text("#count")
    assert counter.endswith("/ 5"), counter

    # browse: wheel, arrow key, next button, second series
    page.mouse.move(700, 400)
    page.mouse.wheel(0, 200)
    page.wait_for_function(f"() => document.getElementById('count').textContent !== {counter!r}")
    assert page.get_attribute("#view", "src") != first
    before = page.inner_text("#count")
    page.keyboard.press("ArrowUp")
    page.wait_for_function(f"() => document.getElementById('count').textContent !== {before!r}")
    page.click("nav button >> nth=1")
    page.wait_for_function(
        "() => document.querySelector('nav button.on') === "
        "document.querySelectorAll('nav button')[1]"
    )
    page.wait_for_function(
        "() => { const v = document.getElementById('view');"
        " return v.complete && v.naturalWidth > 0; }"
    )
    shot(page, "share-page")

    # CT window presets: the rendered image changes
    assert page.is_visible("#wl")
    before = page.locator("#view").screenshot()
    page.select_option("#wl", "300,1500")
    page.wait_for_function(
        "() => { const v = document.getElementById('view');"
        " return v.src.includes('window=300,1500') && v.complete && v.naturalWidth > 0; }"
    )
    assert page.locator("#view").screenshot() != before

    # download the original zip
    with page.expect_download() as info:
        page.click("#dl-original")
    download = info.value
    assert download.suggested_filename == f"study-{study}-original.zip"
    archive = zipfile.ZipFile(io.BytesIO(Path(download.path()).read_bytes()))
    names = archive.namelist()
    assert "DICOMDIR" in names and len(names) == 1 + len(paths)
    sops = {
        dcmread(io.BytesIO(archive.read(n)), stop_before_pixels=True).SOPInstanceUID
        for n in names
        if n != "DICOMDIR"
    }
    assert sops == {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}
    # and the JPEG Lossless one (encoded in a helper process of the server)
    with page.expect_download() as info:
        page.click("#dl-jpeg")
    jpeg = zipfile.ZipFile(io.BytesIO(Path(info.value.path()).read_bytes()))
    members = [n for n in jpeg.namelist() if n != "DICOMDIR"]
    assert len(members) == len(paths)
    for name in members:
        ds = dcmread(io.BytesIO(jpeg.read(name)))
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
        assert ds.pixel_array.shape == (SIZE, SIZE)
    assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p], problems

    # the creator sees the access in the list
    listed = pacs.api.get("/api/shares", params={"study_uid": study}).json()
    assert listed[0]["access_count"] >= 2 and listed[0]["last_access_at"]

    # revoked: the same link is the 404 page now
    assert pacs.api.delete(f"/api/shares/{link['id']}").status_code == 200
    gone = new_page()
    response = gone.goto(link["url"])
    assert response is not None and response.status == 404
    assert "This link is not available" in gone.inner_text("h1")
    assert gone.locator("img").count() == 0
    shot(gone, "share-revoked")
