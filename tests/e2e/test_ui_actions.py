"""Browser: the AE registry page (add, edit, Ping = C-ECHO against a real DCMTK storescp),
forwarding a study to it, the zip download with its progress, sharing a study and opening
the link in a fresh context, and the SR/PDF documents shown in the instance page."""

from __future__ import annotations

import socket
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.e2e.test_ui import _goto_hash, _logged_in_page, _ready, _study_files
from tests.e2e.util import shot
from tests.helpers import dcmtk_env, free_port, have

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]


@pytest.fixture(scope="module")
def storescp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    if not have("/usr/bin/storescp"):
        pytest.skip("DCMTK storescp not installed")
    root = tmp_path_factory.mktemp("storescp")
    folder = root / "in"
    folder.mkdir()
    port = free_port()
    with open(root / "storescp.log", "wb") as log:
        proc = subprocess.Popen(
            ["/usr/bin/storescp", "-od", str(folder), "-aet", "UIDEST", "+B", str(port)],
            env=dcmtk_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port, folder
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def study(pacs: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("actions-study")
    uid, files = _study_files(
        folder,
        "A100",
        "Action^Anna",
        __import__("datetime").date(2024, 5, 6),
        "CT",
        "Actions study",
        "ACT1",
        n_series=2,
        per_series=2,
    )
    assert pacs.store(files)["stored"] == 4
    return uid


def test_ae_registry_add_edit_ping(pacs: Any, new_page: Any, storescp: tuple[int, Path]) -> None:
    port, _folder = storescp
    page = _logged_in_page(pacs, new_page)
    _goto_hash(page, "#/aes")
    page.click("button.primary")  # + Add AE
    page.fill("dialog[open] input[name=ae_title]", "UIDEST")
    page.fill("dialog[open] input[name=host]", "127.0.0.1")
    page.fill("dialog[open] input[name=port]", str(port))
    page.fill("dialog[open] input[name=description]", "storescp of the test")
    page.press("dialog[open] input[name=description]", "Enter")  # Enter submits the dialog
    page.locator("dialog[open]").wait_for(state="detached")
    row = page.locator("tr", has=page.locator("text=UIDEST"))
    row.wait_for()
    assert f"127.0.0.1:{port}" in row.inner_text()
    assert pacs.api.get("/api/aes/UIDEST").json()["port"] == port
    # Ping = C-ECHO through the server: success from the real storescp
    row.locator("[data-action=ping]").click()
    result = page.locator(".ping-result[data-ae=UIDEST]")
    page.wait_for_function(
        "() => document.querySelector('.ping-result[data-ae=UIDEST]')"
        ".classList.contains('ok') || document.querySelector('.ping-result[data-ae=UIDEST]')"
        ".classList.contains('fail')"
    )
    assert "OK (0000" in result.inner_text(), result.inner_text()
    shot(page, "ui-aes")
    # an AE that does not answer: the failure and its reason are shown
    dead = free_port()
    pacs.api.post("/api/aes", json={"ae_title": "NOBODY", "host": "127.0.0.1", "port": dead})
    _goto_hash(page, "#/aes?r=1")
    page.locator("tr", has=page.locator("text=NOBODY")).locator("[data-action=ping]").click()
    page.wait_for_selector(".ping-result[data-ae=NOBODY].fail")
    assert page.inner_text(".ping-result[data-ae=NOBODY]").startswith("Failed")
    # edit: the description changes
    page.locator("tr", has=page.locator("text=NOBODY")).locator("[data-action=edit]").click()
    page.fill("dialog[open] input[name=description]", "nobody home")
    page.click("dialog[open] button.primary")
    page.locator("dialog[open]").wait_for(state="detached")
    assert pacs.api.get("/api/aes/NOBODY").json()["description"] == "nobody home"
    # delete with confirmation
    page.locator("tr", has=page.locator("text=NOBODY")).locator("[data-action=delete]").click()
    page.click("dialog[open] button.danger")
    page.locator("dialog[open]").wait_for(state="detached")
    page.wait_for_function("() => !document.body.innerText.includes('nobody home')")
    assert pacs.api.get("/api/aes/NOBODY").status_code == 404


def test_forward_study_to_storescp(
    pacs: Any, new_page: Any, storescp: tuple[int, Path], study: str
) -> None:
    port, folder = storescp
    if pacs.api.get("/api/aes/UIDEST").status_code == 404:
        pacs.api.post("/api/aes", json={"ae_title": "UIDEST", "host": "127.0.0.1", "port": port})
    before = len(list(folder.rglob("*")))
    page = _logged_in_page(pacs, new_page)
    _goto_hash(page, f"#/study?uid={study}")
    page.click(".page-study [data-action=forward]")
    page.select_option("dialog[open] select[name=ae_title]", "UIDEST")
    page.click("dialog[open] button.primary")
    toast = page.locator(".toast.ok", has_text="UIDEST")
    toast.wait_for(timeout=30000)
    assert "4 sent, 0 failed" in toast.inner_text()
    assert len([p for p in folder.rglob("*") if p.is_file()]) - before >= 4


def test_download_zip_with_progress(pacs: Any, new_page: Any, study: str, tmp_path: Path) -> None:
    page = _logged_in_page(pacs, new_page)
    _goto_hash(page, f"#/study?uid={study}")
    with page.expect_download() as info:
        page.click(".page-study [data-action=download]")
    path = tmp_path / "study.zip"
    info.value.save_as(path)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    assert "DICOMDIR" in names and len([n for n in names if n != "DICOMDIR"]) == 4
    page.wait_for_selector(".toast progress")
    assert "Downloaded" in page.inner_text(".toasts")
    # the same from a row of the study list
    _goto_hash(page, "#/list?accessionnumber=ACT1")
    with page.expect_download() as info:
        page.click(".results [data-action=download]")
    info.value.save_as(tmp_path / "row.zip")
    assert zipfile.ZipFile(tmp_path / "row.zip").namelist() == names


def test_share_create_open_in_fresh_context_and_revoke(
    pacs: Any, new_page: Any, study: str
) -> None:
    page = _logged_in_page(pacs, new_page)
    _goto_hash(page, f"#/study?uid={study}")
    page.click(".page-study [data-action=share]")
    page.select_option("dialog[open] select[name=validity]", "d7")
    page.click("dialog[open] button.primary")
    link_input = page.locator("dialog[open] .share-link input")
    link_input.wait_for()
    link = link_input.input_value()
    assert link.startswith(f"{pacs.url}/share/")
    shot(page, "ui-share-created")
    page.keyboard.press("Escape")
    page.locator("dialog[open]").wait_for(state="detached")
    rows = page.locator("#shares tbody tr")
    rows.first.wait_for()
    assert "active" in rows.first.inner_text()
    # the link works without any login, in a fresh browser context
    stranger = new_page()
    response = stranger.goto(link)
    assert response is not None and response.status == 200
    assert "Action" in stranger.inner_text("body")
    # revoke: the link stops working
    page.click("#shares [data-action=revoke]")
    page.wait_for_function(
        "() => document.querySelector('#shares tbody tr')?.innerText.includes('revoked')"
    )
    again = new_page().goto(link)
    assert again is not None and again.status in (404, 410)
    _goto_hash(page, "#/shares")
    assert "revoked" in page.inner_text("main")
    shot(page, "ui-shares")


def _sr(study: str, series: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName = "A100", "Action^Anna"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyDate, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "20240506", "SR", 90, 1
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator = "11528-7", "LN"
    title.CodeMeaning = "Radiology Report"
    ds.ConceptNameCodeSequence = Sequence([title])
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121071", "DCM", "Finding"
    item.ConceptNameCodeSequence = Sequence([name])
    item.TextValue = "No acute findings <script>alert(1)</script>"
    ds.ContentSequence = Sequence([item])
    return ds


def _pdf(study: str, series: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName = "A100", "Action^Anna"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyDate, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "20240506", "DOC", 91, 1
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "Referral"
    pdf = (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
        b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\n"
        b"trailer<</Root 1 0 R>>\n%%EOF\n"
    )
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    return ds


def test_sr_report_and_pdf_in_the_instance_page(
    pacs: Any, new_page: Any, study: str, tmp_path: Path
) -> None:
    sr_series, pdf_series = generate_uid(), generate_uid()
    sr, pdf = _sr(study, sr_series), _pdf(study, pdf_series)
    paths = []
    for name, ds in (("sr.dcm", sr), ("pdf.dcm", pdf)):
        ds.save_as(tmp_path / name, enforce_file_format=True)
        paths.append(tmp_path / name)
    assert pacs.store(paths)["stored"] == 2
    page = _logged_in_page(pacs, new_page)
    _goto_hash(page, f"#/instance?study={study}&series={sr_series}&uid={sr.SOPInstanceUID}")
    frame = page.locator("iframe.report")
    assert frame.get_attribute("src") == f"/api/instances/{sr.SOPInstanceUID}/report"
    report = page.frame_locator("iframe.report")
    report.locator("text=No acute findings").wait_for()
    assert "<script>" in report.locator("body").inner_text()  # escaped, shown as text
    shot(page, "ui-sr-report")
    _goto_hash(page, f"#/instance?study={study}&series={pdf_series}&uid={pdf.SOPInstanceUID}")
    src = page.get_attribute("iframe.pdf", "src")
    assert src == f"/api/instances/{pdf.SOPInstanceUID}/document"
    status = page.evaluate(
        "async (u) => { const r = await fetch(u); return [r.status,"
        " r.headers.get('content-type')]; }",
        src,
    )
    assert status == [200, "application/pdf"]
    # the series page lists the SR as a document, not an image
    _goto_hash(page, f"#/series?study={study}&uid={sr_series}")
    assert "Basic Text SR" in page.inner_text("tbody")
    _ready(page)


def test_upload_files_with_progress(pacs: Any, new_page: Any, tmp_path: Path) -> None:
    uid, files = _study_files(
        tmp_path / "up",
        "UP1",
        "Up^Load",
        __import__("datetime").date(2024, 1, 2),
        "CT",
        "Uploaded",
        "UPL1",
        n_series=1,
        per_series=3,
    )
    junk = tmp_path / "up" / "notes.dcm"
    junk.write_bytes(b"this is not DICOM" * 20)
    page = _logged_in_page(pacs, new_page)
    _goto_hash(page, "#/upload")
    page.set_input_files(".upload-pick input[type=file]:not([webkitdirectory])", [*files, junk])
    page.wait_for_function(
        "() => document.querySelector('.upload-results table') !== null", timeout=30000
    )
    assert page.inner_text(".upload-summary") == "3 stored, 1 failed"
    assert page.locator(".upload-results progress").get_attribute("value") is not None
    failed = page.locator(".upload-results tr", has_text="notes.dcm")
    assert "failed" in failed.inner_text()
    shot(page, "ui-upload")
    page.locator(".upload-results a").first.click()
    page.wait_for_function("() => location.hash.startsWith('#/study')")
    _ready(page)
    assert pacs.api.get(f"/api/studies/{uid}").json()["num_instances"] == 3
    # a viewer may not upload: no menu entry, and the page says why
    pacs.add_user("noupload", "viewer", "noupload-pass-1")
    other = _logged_in_page(pacs, new_page, "noupload", "noupload-pass-1")
    assert other.locator("#nav a[data-route=upload]").count() == 0
    _goto_hash(other, "#/upload")
    assert "upload" in other.inner_text(".error-box")


def test_api_token_created_used_and_revoked(pacs: Any, new_page: Any) -> None:
    import httpx

    page = _logged_in_page(pacs, new_page)
    page.click("#who")  # the user's name opens the account page
    page.wait_for_function("() => location.hash.startsWith('#/password')")
    _ready(page)
    page.fill("input[name=token_name]", "nightly script")
    page.select_option("select[name=token_days]", "30")
    page.click("#tokens button[type=submit]")
    token = page.locator("dialog[open] .share-link input").input_value()
    assert token.startswith("pbx_")
    page.keyboard.press("Enter")  # the one button closes the dialog
    page.locator("dialog[open]").wait_for(state="detached")
    row = page.locator("#tokens tbody tr", has_text="nightly script")
    row.wait_for()
    assert "active" in row.inner_text()
    bearer = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{pacs.url}/api/me", headers=bearer).json()["user"]["username"] == "admin"
    row.locator("button").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#tokens tbody tr')]"
        ".some(r => r.innerText.includes('nightly script') && r.innerText.includes('revoked'))"
    )
    assert httpx.get(f"{pacs.url}/api/me", headers=bearer).status_code == 401


def test_delete_series_and_patient(pacs: Any, new_page: Any, tmp_path: Path) -> None:
    uid, files = _study_files(
        tmp_path,
        "DP1",
        "Del^Patient",
        __import__("datetime").date(2024, 3, 4),
        "CT",
        "Two series",
        "DP1",
        n_series=2,
        per_series=1,
    )
    pacs.store(files)
    series = pacs.api.get(f"/api/studies/{uid}/series").json()
    page = _logged_in_page(pacs, new_page)
    _goto_hash(page, f"#/series?study={uid}&uid={series[0]['series_instance_uid']}")
    page.click(".page-series [data-action=delete]")
    page.click("dialog[open] button.danger")
    page.wait_for_function("() => location.hash.startsWith('#/study')")
    _ready(page)
    assert page.locator(".series-card").count() == 1
    assert pacs.api.get(f"/api/studies/{uid}").json()["num_series"] == 1
    page.click(".crumbs a:nth-child(2)")  # the patient
    page.wait_for_function("() => location.hash.startsWith('#/patient')")
    _ready(page)
    page.click(".page-patient [data-action=delete]")
    assert "1 studies" in page.inner_text("dialog[open]")
    page.click("dialog[open] button.danger")
    page.wait_for_function("() => location.hash === '#/list'")
    assert pacs.api.get("/api/patients/DP1").status_code == 404
