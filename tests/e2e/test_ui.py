"""The browser application (issue 6 items 1, 2, 4, 5; SPEC E3, E4) in headless Chromium:
login form, forced password change, study list driven by URL parameters with every E4
operator, drill-down to a tag dump, privileges in the UI and behind it, delete with a
confirmation dialog. Screenshots of the main pages go to tests/e2e/artifacts/."""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from tests.e2e.util import login, shot
from tests.helpers import make_ct

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

TODAY = date.today()
#: (patient id, name, study date, modality, description): accession "OP<n>" each
OPERATOR_STUDIES = [
    ("P100", "Alpha^Ann", TODAY, "CT", "Head CT"),
    ("P200", "Bravo^Bob", TODAY - timedelta(days=1), "MR", "Knee MR"),
    ("P300", "Charlie^Cy", TODAY - timedelta(days=10), "CR", "Chest XR"),
    ("P400", "Delta^Dee", date(2015, 6, 15), "CT", "Old CT abdomen"),
    ("P500", "Echo^Eve", date(2010, 1, 1), "US", "Old US"),
]


def _study_files(
    folder: Path,
    pid: str,
    name: str,
    day: date,
    modality: str,
    desc: str,
    accession: str,
    n_series: int = 1,
    per_series: int = 1,
) -> tuple[str, list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    paths = []
    for s in range(n_series):
        series = generate_uid()
        for i in range(per_series):
            ds = make_ct(
                study,
                series,
                patient_id=pid,
                patient_name=name,
                modality=modality,
                instance_number=i + 1,
                rows=64,
                cols=64,
            )
            ds.StudyDate = day.strftime("%Y%m%d")
            ds.AccessionNumber = accession
            ds.StudyDescription = desc
            ds.SeriesNumber = s + 1
            ds.SeriesDescription = f"series {s + 1}"
            path = folder / f"{pid}_{s}_{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return study, paths


@pytest.fixture(scope="module")
def studies(pacs: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The operator studies (accession OP1..OP5) and a 2-series study for the drill-down."""
    root = tmp_path_factory.mktemp("ui-studies")
    uids: dict[str, str] = {}
    paths: list[Path] = []
    for n, (pid, name, day, modality, desc) in enumerate(OPERATOR_STUDIES, 1):
        uid, files = _study_files(root / pid, pid, name, day, modality, desc, f"OP{n}")
        uids[pid] = uid
        paths += files
    uid, files = _study_files(
        root / "drill",
        "D900",
        "Drill^Down",
        TODAY,
        "CT",
        "Drill study",
        "DRILL1",
        n_series=2,
        per_series=3,
    )
    uids["drill"] = uid
    paths += files
    assert pacs.store(paths)["stored"] == len(paths)
    return uids


def _ready(page: Any, timeout: float = 15000) -> None:
    """Wait until the application finished rendering the current hash."""
    page.wait_for_function(
        "() => { const p = document.querySelector('#view > .page');"
        " return p && p.dataset.ready === location.hash; }",
        timeout=timeout,
    )


def _goto_hash(page: Any, hash_: str) -> None:
    page.evaluate("h => { location.hash = h; }", hash_)
    _ready(page)


def _listed_ids(page: Any) -> list[str]:
    return sorted(
        page.locator(".results tbody tr.clickable td[data-col=patient_id]").all_inner_texts()
    )


def _watch_errors(page: Any) -> list[str]:
    """Uncaught script errors and Content-Security-Policy violations of ``page``."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error" and "Content Security Policy" in msg.text
            else None
        ),
    )
    page.pacsbox_errors = errors
    return errors


def _logged_in_page(pacs: Any, new_page: Any, user: str = "admin", pw: str | None = None) -> Any:
    page = new_page()
    _watch_errors(page)
    login(page, pacs.url, user, pw or pacs.admin_password)
    page.goto(f"{pacs.url}/#/list")
    _ready(page)
    return page


# -- login ---------------------------------------------------------------------------------
def test_login_form_then_forced_password_change(pacs: Any, new_page: Any) -> None:
    pacs.add_user("newbie", "radiologist", "first-pass-123", must_change=True)
    page = new_page()
    page.goto(f"{pacs.url}/#/list?patientid=P100")
    _ready(page)
    assert "#/login" in page.url  # not logged in: the login form, the search kept as next
    assert page.locator("form.login input[name=username]").is_visible()
    shot(page, "ui-login")
    page.fill("input[name=username]", "newbie")
    page.fill("input[name=password]", "wrong-password")
    page.press("input[name=password]", "Enter")  # Enter submits
    page.wait_for_selector(".error-box")
    assert "wrong user name or password" in page.inner_text(".error-box")
    page.fill("input[name=password]", "first-pass-123")
    page.press("input[name=password]", "Enter")
    page.wait_for_selector("input[name=new]")
    _ready(page)
    assert "#/password" in page.url
    assert page.locator("#nav a").count() == 0  # nothing else until the password changes
    # the API refuses everything else too
    status = page.evaluate("async () => (await fetch('/api/studylist')).status")
    assert status == 403
    shot(page, "ui-password-change")
    page.fill("input[name=current]", "first-pass-123")
    page.fill("input[name=new]", "second-pass-456")
    page.fill("input[name=again]", "second-pass-456")
    page.press("input[name=again]", "Enter")
    page.wait_for_function("() => location.hash.startsWith('#/list')")
    _ready(page)
    assert "patientid=P100" in page.url  # back to the search asked for at first
    assert page.locator("#nav a[data-route=list]").is_visible()
    assert pacs.api.get("/api/users/newbie").json()["must_change_password"] is False


def test_no_basic_auth_prompt_for_the_application(pacs: Any) -> None:
    """401s to the application's requests carry no WWW-Authenticate (no browser pop-up);
    other clients still get the Basic challenge."""
    import httpx

    r = httpx.get(f"{pacs.url}/api/me", headers={"X-Requested-With": "pacsbox-ui"})
    assert r.status_code == 401 and "www-authenticate" not in r.headers
    assert r.json()["error"]["status"] == 401
    r = httpx.get(f"{pacs.url}/api/me")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")


# -- study list by URL parameters (E4) -------------------------------------------------------
OPERATOR_CASES = [
    ("patientid=P100", ["P100"]),
    ("patientid===P100", ["P100"]),
    ("patientid=!=P100", ["P200", "P300", "P400", "P500"]),
    ("patientid=P100&patientid=P300", ["P100", "P300"]),
    ("modality=ct&modality=mr", ["P100", "P200", "P400"]),
    ("studydate=>>2015/06/15", ["P100", "P200", "P300"]),
    ("studydate=>=2015/06/15", ["P100", "P200", "P300", "P400"]),
    ("studydate=<<2015/06/15", ["P500"]),
    ("studydate=<=2015/06/15", ["P400", "P500"]),
    ("studydescription=**CT", ["P100", "P400"]),
    ("patientname=**rav", ["P200"]),
    ("studydate=~2013/11/25~2016/08/31", ["P400"]),
    ("studydate==~2013/11/25~2016/08/31", ["P400"]),
    ("studydate=today", ["P100"]),
    ("studydate=yesterday", ["P200"]),
    ("studydate=pastweek", ["P100", "P200"]),
    ("studydate=pastmonth", ["P100", "P200", "P300"]),
]


def test_study_list_url_parameters_every_operator(
    pacs: Any, new_page: Any, studies: dict[str, str]
) -> None:
    page = _logged_in_page(pacs, new_page)
    for query, expected in OPERATOR_CASES:
        _goto_hash(page, f"#/list?accessionnumber=OP*&{query}")
        assert page.locator(".error-box").count() == 0, (query, page.inner_text("main"))
        assert _listed_ids(page) == expected, query
        total = page.get_attribute(".results .total", "data-total")
        assert total == str(len(expected)), query
    # the form shows the search of the URL, and submitting it keeps the same URL semantics
    _goto_hash(page, "#/list?patientid=P100&patientid=P300&modality=ct")
    assert page.input_value("input[name=patientid]") == "P100, P300"
    assert page.input_value("input[name=modality]") == "ct"
    page.fill("input[name=modality]", "")
    page.fill("input[name=accessionnumber]", "OP*")
    page.press("input[name=accessionnumber]", "Enter")
    page.wait_for_function("() => location.hash.includes('accessionnumber')")
    _ready(page)
    assert _listed_ids(page) == ["P100", "P300"]
    assert "modality" not in page.url
    # a bad operator or key is a clear message, not an empty list
    _goto_hash(page, "#/list?studydate=>>not-a-date")
    assert page.locator(".results .error-box").count() == 1
    _goto_hash(page, "#/list?nosuchkey=1")
    assert "nosuchkey" in page.inner_text(".results .error-box")
    _goto_hash(page, "#/list?accessionnumber=OP*")
    shot(page, "ui-study-list")
    assert page.pacsbox_errors == []


def test_study_list_sorting_and_paging(pacs: Any, new_page: Any, studies: dict[str, str]) -> None:
    page = _logged_in_page(pacs, new_page)
    _goto_hash(page, "#/list?accessionnumber=OP*&sort=patientid&limit=2")
    assert page.locator(
        ".results tbody tr.clickable td[data-col=patient_id]"
    ).all_inner_texts() == [
        "P100",
        "P200",
    ]
    assert page.get_attribute(".results .total", "data-total") == "5"
    page.click(".pager button:has-text('Next')")
    page.wait_for_function("() => location.hash.includes('offset=2')")
    _ready(page)
    assert page.locator(
        ".results tbody tr.clickable td[data-col=patient_id]"
    ).all_inner_texts() == [
        "P300",
        "P400",
    ]
    # clicking the sorted column header reverses the order
    page.click("th[aria-sort=ascending] button")
    page.wait_for_function("() => location.hash.includes('sort=-patientid')")
    _ready(page)
    assert page.locator(
        ".results tbody tr.clickable td[data-col=patient_id]"
    ).all_inner_texts() == [
        "P500",
        "P400",
    ]
    # every sortable column is a sort key the server knows
    headers = page.locator(".results th button.sort")
    assert headers.count() == 11
    for i in range(headers.count()):
        _goto_hash(page, "#/list?accessionnumber=OP*")
        label = headers.nth(i).inner_text()
        headers.nth(i).click()
        page.wait_for_function("() => location.hash.includes('sort=')")
        _ready(page)
        assert page.locator(".error-box").count() == 0, (label, page.inner_text("main"))
        assert page.get_attribute(".results .total", "data-total") == "5", label


# -- drill-down --------------------------------------------------------------------------------
def test_drill_down_patient_study_series_instance_tag_dump(
    pacs: Any, new_page: Any, studies: dict[str, str]
) -> None:
    page = _logged_in_page(pacs, new_page)
    _goto_hash(page, "#/list?patientid=D900")
    page.click(".results tbody tr.clickable")  # the row opens the study
    page.wait_for_function("() => location.hash.startsWith('#/study')")
    _ready(page)
    assert studies["drill"] in page.inner_text(".details")
    cards = page.locator(".series-card")
    assert cards.count() == 2
    # thumbnails are real images served by WADO-RS (naturalWidth > 0 once loaded)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.series-card img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    shot(page, "ui-study")
    cards.first.locator("a").click()
    page.wait_for_function("() => location.hash.startsWith('#/series')")
    _ready(page)
    rows = page.locator("tbody tr.clickable")
    assert rows.count() == 3
    assert "CT Image" in rows.first.inner_text()
    shot(page, "ui-series")
    rows.first.press("Enter")  # keyboard: Enter on a focused row opens it
    page.wait_for_function("() => location.hash.startsWith('#/instance')")
    _ready(page)
    dump = page.inner_text("table.tag-dump")
    assert "(0010,0020)" in dump and "PatientID" in dump and "D900" in dump
    assert "(0020,000D)" in dump and studies["drill"] in dump
    page.fill("input[type=search]", "AccessionNumber")
    visible = page.locator("table.tag-dump tbody tr:visible")
    assert visible.count() == 1 and "DRILL1" in visible.inner_text()
    page.fill("input[type=search]", "")
    shot(page, "ui-tag-dump")
    # the patient level
    page.click(".crumbs a:nth-child(2)")
    page.wait_for_function("() => location.hash.startsWith('#/patient')")
    _ready(page)
    assert "D900" in page.inner_text("main"), page.inner_text("main")
    assert page.locator("tbody tr.clickable").count() == 1
    assert page.pacsbox_errors == []


# -- privileges --------------------------------------------------------------------------------
def test_viewer_sees_no_delete_and_api_refuses(
    pacs: Any, new_page: Any, studies: dict[str, str]
) -> None:
    pacs.add_user("looker", "viewer", "looker-pass-123")
    page = _logged_in_page(pacs, new_page, "looker", "looker-pass-123")
    _goto_hash(page, f"#/study?uid={studies['P500']}")
    assert page.locator("[data-action=view]").count() == 1
    for action in ("delete", "forward", "share", "download"):
        assert page.locator(f"[data-action={action}]").count() == 0, action
    _goto_hash(page, "#/list?accessionnumber=OP*")
    assert page.locator(".results [data-action=delete]").count() == 0
    # admin pages are not in the menu, and the API says no
    assert page.locator("#nav a[data-route=users]").count() == 0
    _goto_hash(page, "#/users")
    assert "admin" in page.inner_text(".error-box")
    status = page.evaluate(
        """async (uid) => (await fetch('/api/studies/' + uid, {method: 'DELETE',
            headers: {'X-CSRF-Token': sessionStorage.getItem('pacsbox.csrf')}})).status""",
        studies["P500"],
    )
    assert status == 403
    assert pacs.api.get(f"/api/studies/{studies['P500']}").status_code == 200


def test_admin_deletes_with_confirmation(pacs: Any, new_page: Any, tmp_path: Path) -> None:
    uid, files = _study_files(tmp_path, "X700", "Gone^Soon", TODAY, "CT", "To delete", "DEL1")
    pacs.store(files)
    page = _logged_in_page(pacs, new_page)
    _goto_hash(page, f"#/study?uid={uid}")
    page.click("[data-action=delete]")
    dialog = page.locator("dialog[open]")
    assert "Gone, Soon" in dialog.inner_text()
    shot(page, "ui-delete-confirm")
    page.keyboard.press("Escape")  # Esc closes: nothing deleted
    dialog.wait_for(state="detached")
    assert pacs.api.get(f"/api/studies/{uid}").status_code == 200
    page.click("[data-action=delete]")
    page.click("dialog[open] button.danger")
    page.wait_for_function("() => location.hash === '#/list'")
    _ready(page)
    assert pacs.api.get(f"/api/studies/{uid}").status_code == 404
    audit = pacs.api.get("/api/audit", params={"action": "delete", "study_uid": uid}).json()
    assert audit and audit[0]["username"] == "admin"


# -- admin pages -------------------------------------------------------------------------------
def test_admin_pages_render(pacs: Any, new_page: Any, studies: dict[str, str]) -> None:
    page = _logged_in_page(pacs, new_page)
    _goto_hash(page, "#/dashboard")
    assert page.locator(".stat").count() >= 6
    assert "dicom" in page.inner_text("main")
    shot(page, "ui-dashboard")
    _goto_hash(page, "#/users")
    assert "admin" in page.inner_text("main") and "radiologist" in page.inner_text("main")
    shot(page, "ui-users")
    _goto_hash(page, "#/settings")
    assert page.locator("tr[data-key=pn_case_insensitive] input[type=checkbox]").count() == 1
    assert page.locator("tr[data-key=http_port] input").count() == 0  # needs a restart
    assert "restart" in page.inner_text("tr[data-key=http_port]")
    shot(page, "ui-settings", full_page=False)
    _goto_hash(page, "#/audit?action=login")
    assert page.locator("tbody tr").count() >= 1
    assert set(page.locator("tbody tr td:nth-child(3)").all_inner_texts()) == {"login"}
    shot(page, "ui-audit")
    assert page.pacsbox_errors == []


def test_settings_users_language_and_viewer_link(
    pacs: Any, new_page: Any, studies: dict[str, str]
) -> None:
    page = _logged_in_page(pacs, new_page)
    # a runtime setting changes through PATCH /api/settings
    _goto_hash(page, "#/settings")
    box = page.locator("tr[data-key=pn_case_insensitive] input[type=checkbox]")
    before = box.is_checked()
    box.set_checked(not before)
    page.click("form.settings button[type=submit]")
    page.locator(".toast.ok", has_text="pn_case_insensitive").wait_for()
    assert pacs.api.get("/api/settings").json()["pn_case_insensitive"] is (not before)
    pacs.api.patch("/api/settings", json={"pn_case_insensitive": before})
    # a user added through the dialog
    _goto_hash(page, "#/users")
    page.click(".page-head button.primary")
    inputs = page.locator("dialog[open] input")
    inputs.nth(0).fill("uitech")
    inputs.nth(1).fill("Tech Person")
    page.select_option("dialog[open] select", "technician")
    page.fill("dialog[open] input[type=password]", "tech-pass-1234")
    page.click("dialog[open] button.primary")
    page.locator("dialog[open]").wait_for(state="detached")
    user = pacs.api.get("/api/users/uitech").json()
    assert user["role"] == "technician" and user["must_change_password"] is True
    # Italian: the whole shell switches, and stays after a reload
    page.select_option("#lang", "it")
    page.wait_for_function("() => document.documentElement.lang === 'it'")
    _goto_hash(page, "#/list?accessionnumber=OP*")
    assert page.inner_text("#nav a[data-route=list]") == "Studi"
    assert "5 studi" in page.inner_text(".results .total")
    assert "NOME PAZIENTE" in page.inner_text(".results thead").upper()
    shot(page, "ui-study-list-it")
    page.reload()
    _ready(page)
    assert page.inner_text("#nav a[data-route=list]") == "Studi"
    page.select_option("#lang", "en")
    page.wait_for_function("() => document.documentElement.lang === 'en'")
    # the viewer route: a study UID goes straight to OHIF; a search resolves through the list
    _goto_hash(page, "#/list?patientid=P200")
    href = page.get_attribute(".results [data-action=view]", "href")
    assert href == f"/viewer/ohif/viewer?StudyInstanceUIDs={studies['P200']}"
    page.evaluate("location.hash = '#/viewer?patientid=P100&patientid=P200'")
    page.wait_for_url(re.compile(r"/viewer/ohif/viewer\?StudyInstanceUIDs="))
    shown = page.url.split("StudyInstanceUIDs=")[1].split(",")
    assert sorted(shown) == sorted([studies["P100"], studies["P200"]])
    page.goto(f"{pacs.url}/#/viewer?accessionnumber=NOPE")
    _ready(page)
    assert "No study matches" in page.inner_text("main")


def test_tablet_layout(pacs: Any, new_page: Any, studies: dict[str, str]) -> None:
    """A tablet-sized window: the menu stays reachable and the table scrolls inside its box."""
    page = new_page(viewport={"width": 820, "height": 1180}, has_touch=True)
    login(page, pacs.url, "admin", pacs.admin_password)
    page.goto(f"{pacs.url}/#/list?accessionnumber=OP*")
    _ready(page)
    assert page.locator("#nav a[data-route=list]").is_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 820  # no page-wide horizontal scrolling; the table wrapper scrolls
    shot(page, "ui-study-list-tablet")


def test_new_arrivals_appear_in_the_list(pacs: Any, new_page: Any, tmp_path: Path) -> None:
    page = new_page()
    page.add_init_script("window.pacsboxPollMs = 300")
    login(page, pacs.url, "admin", pacs.admin_password)
    page.goto(f"{pacs.url}/#/list?patientid=LIVE1")
    _ready(page)
    assert page.locator(".results tbody tr.clickable").count() == 0
    assert page.locator(".new-arrivals").is_hidden()
    page.wait_for_timeout(700)  # the poller has its baseline
    _uid, files = _study_files(tmp_path / "a", "LIVE1", "Live^One", TODAY, "CT", "Live", "L1")
    pacs.store(files)
    page.locator(".new-arrivals").wait_for(state="visible", timeout=10000)
    page.click(".new-arrivals")
    page.wait_for_function(
        "() => document.querySelectorAll('.results tbody tr.clickable').length === 1"
    )
    # auto-refresh: the next arrival shows up by itself
    page.check(".live input[type=checkbox]")
    page.wait_for_timeout(700)
    _uid, files = _study_files(tmp_path / "b", "LIVE1", "Live^One", TODAY, "MR", "Live 2", "L2")
    pacs.store(files)
    page.wait_for_function(
        "() => document.querySelectorAll('.results tbody tr.clickable').length === 2",
        timeout=10000,
    )


def test_url_login_disabled_by_default(pacs: Any, new_page: Any) -> None:
    """On a server with the default settings the credentials are still removed, and ignored."""
    page = new_page()
    page.goto(f"{pacs.url}/#/list?id=admin&password={pacs.admin_password}&patientid=X")
    _ready(page)
    assert "#/login" in page.url
    assert pacs.admin_password not in page.url
    assert "disabled" in page.inner_text(".toasts")


def test_logout_ends_the_session(pacs: Any, new_page: Any) -> None:
    page = _logged_in_page(pacs, new_page)
    assert page.locator("#logout").is_visible()
    page.click("#logout")
    page.wait_for_function("() => location.hash.startsWith('#/login')")
    _ready(page)
    assert page.locator("#logout").is_hidden()
    assert page.locator("#nav a").count() == 0
    # (a plain fetch would get the Basic challenge, and the browser would wait for a password)
    status = page.evaluate(
        "async () => (await fetch('/api/me', {headers: {'X-Requested-With': 'pacsbox-ui'}})).status"
    )
    assert status == 401
    page.goto(f"{pacs.url}/#/dashboard")
    _ready(page)
    assert "#/login" in page.url and "next=" in page.url


def test_an_ended_session_returns_to_the_login_form(
    pacs: Any, new_page: Any, studies: dict[str, str]
) -> None:
    page = _logged_in_page(pacs, new_page)
    _goto_hash(page, "#/list?accessionnumber=OP*")
    # the session ends behind the application's back (another tab logged out, or it expired)
    page.evaluate(
        "async () => fetch('/api/logout', {method: 'POST',"
        " headers: {'X-CSRF-Token': sessionStorage.getItem('pacsbox.csrf')}})"
    )
    page.click("#nav a[data-route=dashboard]")
    page.wait_for_function("() => location.hash.startsWith('#/login')")
    _ready(page)
    assert "session ended" in page.inner_text(".toasts")
    assert "next=" in page.url and "dashboard" in page.url
    # a wrong current password in the password form is an error there, not a logout
    pacs.add_user("pwuser", "viewer", "pwuser-pass-1")
    page.fill("input[name=username]", "pwuser")
    page.fill("input[name=password]", "pwuser-pass-1")
    page.press("input[name=password]", "Enter")
    page.wait_for_function("() => location.hash.startsWith('#/dashboard')")
    _ready(page)
    _goto_hash(page, "#/password")
    page.fill("input[name=current]", "not-my-password")
    page.fill("input[name=new]", "another-pass-1")
    page.fill("input[name=again]", "another-pass-1")
    page.press("input[name=again]", "Enter")
    page.wait_for_selector(".page-password .error-box")
    assert "#/password" in page.url
