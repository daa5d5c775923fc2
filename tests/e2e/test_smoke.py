"""The browser-test harness itself: Chromium starts, reaches pacsbox, and cannot reach
anything else (external requests are aborted)."""

from __future__ import annotations

from typing import Any

from tests.e2e.util import login, shot


def test_browser_reaches_pacsbox_and_nothing_else(pacs: Any, new_page: Any) -> None:
    page = new_page()
    response = page.goto(f"{pacs.url}/health")
    assert response is not None and response.status == 200
    assert '"status":"ok"' in page.content().replace(" ", "")
    login(page, pacs.url, "admin", pacs.admin_password)
    me = page.evaluate("async () => (await fetch('/api/me')).json()")
    assert me["user"]["username"] == "admin" and me["auth"] == "session"
    blocked = page.evaluate(
        "async () => { try { await fetch('https://example.com/'); return 'reached'; }"
        " catch (e) { return 'blocked'; } }"
    )
    assert blocked == "blocked"
    shot(page, "smoke-health")


def test_users_and_upload_helpers(pacs: Any, tmp_path: Any) -> None:
    from tests.helpers import write_study

    pacs.add_user("e2e-viewer", "viewer", "viewer-pass-123")
    body = pacs.store(write_study(tmp_path, 1, 2))
    assert body["stored"] == 2
    r = pacs.api.get("/api/users/e2e-viewer")
    assert r.status_code == 200 and r.json()["role"] == "viewer"
