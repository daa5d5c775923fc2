"""sendtopacs web UI (SPEC S7) in headless Chromium: add a file, fill the non-DICOM files info,
send it to pacsbox and see the success mark; a device that is down gives the failure mark and
the reason; the settings tabs. The service runs with credentials (the browser sends Basic)."""

from __future__ import annotations

import io
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.util import shot
from tests.helpers import VENV_BIN, free_port, open_server_archive

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

USER, PASSWORD = "desk", "Front-Office-2026!"


@pytest.fixture(scope="module")
def his() -> Iterator[int]:
    """An HTTP JSON worklist with one order (answers whatever is asked)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            body = json.dumps(
                [
                    {
                        "id": "WL-42",
                        "last": "Muster",
                        "first": "Maxi",
                        "dob": "19800202",
                        "acc": "ACC42",
                        "desc": "Skin check",
                    }
                ]
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_port
    httpd.shutdown()


@pytest.fixture(scope="module")
def service(pacs, his: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("stp-ui")
    res = pacs.server.cli("ae", "add", "SENDTOPACS", "--host", "127.0.0.1", "--port", "104")
    assert res.returncode == 0, res.stdout + res.stderr
    settings = root / "stp.json"
    settings.write_text(
        json.dumps(
            {
                "devices": [
                    {
                        "name": "pacsbox",
                        "ae_title": pacs.server.ae_title,
                        "host": "127.0.0.1",
                        "port": pacs.dicom_port,
                        "default": True,
                    },
                    {
                        "name": "offline",
                        "ae_title": "GONE",
                        "host": "127.0.0.1",
                        "port": free_port(),
                    },
                ],
                "worklist_devices": [
                    {
                        "name": "his",
                        "kind": "http",
                        "url": f"http://127.0.0.1:{his}/orders?pid={{patient_id}}",
                        "mapping": {
                            "patient_id": "id",
                            "last_name": "last",
                            "first_name": "first",
                            "birth_date": "dob",
                            "accession_number": "acc",
                            "study_description": "desc",
                        },
                    }
                ],
                "monitors": [
                    {"path": str(root / "watched"), "mode": "add-to-list", "stable_seconds": 0.3}
                ],
                "service": {
                    "state_dir": str(root / "state"),
                    "lock_file": str(root / "lock"),
                    "username": USER,
                    "password": PASSWORD,
                },
            }
        )
    )
    port = free_port()
    log = open(root / "service.log", "wb")  # noqa: SIM115 - the child writes it
    proc = subprocess.Popen(
        [str(VENV_BIN / "sendtopacs"), "service", "--settings", str(settings), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (root / "service.log").read_text()
            try:
                if httpx.get(f"{url}/api/health", timeout=1).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.1)
        yield url, root / "watched"
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def _photo(tmp_path: Path) -> Path:
    yy, xx = np.indices((60, 80))
    rgb = np.stack([(xx * 3) % 256, (yy * 4) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    path = tmp_path / "wound_photo.png"
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    return path


def _open(new_page, service: tuple[str, Path]):  # noqa: ANN001, ANN202
    page = new_page(http_credentials={"username": USER, "password": PASSWORD})
    page.goto(service[0])
    page.wait_for_selector("body[data-ready='1']")
    return page


def _fill_patient(page, patient_id: str) -> None:  # noqa: ANN001
    page.click("#btn-info")
    dialog = page.locator("#patient-dialog")
    dialog.wait_for(state="visible")
    dialog.locator("[name=patient_id]").fill(patient_id)
    dialog.locator("[name=last_name]").fill("Browser")
    dialog.locator("[name=first_name]").fill("Erika")
    dialog.locator("[name=birth_date]").fill("1975-04-03")
    dialog.locator("[name=sex]").select_option("F")
    dialog.locator("[name=study_description]").fill("Wound photo")
    dialog.locator("[name=modality]").select_option("XC")
    page.click("#patient-save")
    dialog.wait_for(state="hidden")


def test_add_fill_send_success_mark(
    service: tuple[str, Path], pacs, new_page, tmp_path: Path
) -> None:  # noqa: ANN001
    page = _open(new_page, service)
    page.set_input_files("#add-input", str(_photo(tmp_path)))
    row = page.locator("#files tbody tr", has_text="wound_photo.png")
    row.wait_for()
    assert row.locator("td").nth(2).inner_text() == "non-DICOM"
    # sending without patient data opens the form instead
    page.click("#btn-send")
    page.locator("#patient-dialog").wait_for(state="visible")
    page.click("#patient-save")  # required fields are checked in the form
    assert "Patient ID" in page.inner_text("#patient-errors")
    page.click("#patient-cancel")
    _fill_patient(page, "UI-E2E-1")
    assert "UI-E2E-1" in page.inner_text("#patient-summary")
    page.select_option("#send-device", "pacsbox")
    page.click("#btn-send")
    page.wait_for_selector("#files tbody tr.state-sent td.mark:text('✓')", timeout=30000)
    assert row.locator("td.state").inner_text() == "sent"
    assert "sent" in page.inner_text("#log") and "association" in page.inner_text("#log")
    shot(page, "sendtopacs-ui-sent")
    # it is in pacsbox with the patient data from the form
    from sqlalchemy import select

    from pacsbox.archive.index.models import Patient

    arch = open_server_archive(pacs.server)
    try:
        with arch.engine.connect() as conn:
            names = dict(
                conn.execute(
                    select(Patient.__table__.c.patient_id, Patient.__table__.c.patient_name)
                ).all()
            )
    finally:
        arch.engine.dispose()
    assert names.get("UI-E2E-1") == "Browser^Erika"


def test_failure_mark_and_reason(service: tuple[str, Path], new_page, tmp_path: Path) -> None:  # noqa: ANN001
    page = _open(new_page, service)
    page.click("#btn-clear")
    page.set_input_files("#add-input", str(_photo(tmp_path)))
    page.locator("#files tbody tr", has_text="wound_photo.png").wait_for()
    _fill_patient(page, "UI-E2E-2")
    page.select_option("#send-device", "offline")
    page.click("#btn-send")
    failed = page.locator("#files tbody tr.state-failed")
    failed.wait_for(timeout=30000)
    assert failed.locator("td.mark").inner_text() == "✗"
    assert "connection refused" in failed.locator("td.message").inner_text()
    shot(page, "sendtopacs-ui-failed")


def test_settings_tabs_and_echo(service: tuple[str, Path], new_page) -> None:  # noqa: ANN001
    page = _open(new_page, service)
    page.click("button.nav[data-view=settings]")
    page.wait_for_selector("body[data-settings='loaded']")
    assert page.input_value("#settings-form [name=ae_title]") == "SENDTOPACS"
    assert "required (user desk)" in page.inner_text("#cred-state")
    tabs = [t.inner_text() for t in page.locator("button.tab").all()]
    assert tabs == ["Main", "Non-DICOM", "DICOM", "Devices", "Worklist", "Monitor"]
    page.fill("#settings-form [name=station_name]", "DESK1")
    page.click("#settings-form button[type=submit]")
    page.wait_for_selector("#settings-msg:text('saved')")
    page.click("button.tab[data-tab=devices]")
    page.locator("#devices tbody tr", has_text="pacsbox").locator("button", has_text="Echo").click()
    page.wait_for_selector("#settings-msg:has-text('C-ECHO PACSBOX')")
    assert "success" in page.inner_text("#settings-msg")
    shot(page, "sendtopacs-ui-devices")
    r = httpx.get(f"{service[0]}/api/settings", auth=(USER, PASSWORD))
    assert r.json()["station_name"] == "DESK1"


def test_worklist_search_fills_the_form(service: tuple[str, Path], new_page) -> None:  # noqa: ANN001
    page = _open(new_page, service)
    page.click("#btn-info")
    page.locator("#patient-dialog").wait_for(state="visible")
    page.click("#btn-search")
    search = page.locator("#search-dialog")
    search.wait_for(state="visible")
    page.wait_for_selector("#search-form [name=device] option[value=his]", state="attached")
    search.locator("[name=patient_id]").fill("WL-42")
    page.click("#search-run")
    result = page.locator("#search-results tbody tr", has_text="WL-42")
    result.wait_for()
    assert "Muster^Maxi" in result.inner_text()
    shot(page, "sendtopacs-ui-worklist")
    result.locator("button", has_text="Select").click()
    search.wait_for(state="hidden")
    form = page.locator("#patient-form")
    assert form.locator("[name=patient_id]").input_value() == "WL-42"
    assert form.locator("[name=last_name]").input_value() == "Muster"
    assert form.locator("[name=first_name]").input_value() == "Maxi"
    assert form.locator("[name=birth_date]").input_value() == "1980-02-02"
    assert form.locator("[name=accession_number]").input_value() == "ACC42"
    assert form.locator("[name=study_description]").input_value() == "Skin check"


def test_monitored_folder_adds_to_the_list(service: tuple[str, Path], new_page) -> None:  # noqa: ANN001
    page = _open(new_page, service)
    watched = service[1]
    tmp = watched / ".incoming.png"
    tmp.write_bytes(_photo(watched.parent).read_bytes())
    tmp.rename(watched / "from_camera.png")
    row = page.locator("#files tbody tr", has_text="from_camera.png")
    row.wait_for(timeout=20000)  # the list is refreshed every 5 s
    assert row.locator("td").nth(2).inner_text() == "non-DICOM"
    page.click("button.nav[data-view=monitor]")
    folder = page.locator("#monitors tbody tr", has_text=str(watched))
    folder.wait_for()
    assert "add-to-list" in folder.inner_text()
    page.locator("#monitor-files tbody tr", has_text="from_camera.png").wait_for()
    assert (watched / "from_camera.png").exists()  # add-to-list never moves the file
    shot(page, "sendtopacs-ui-monitor")
