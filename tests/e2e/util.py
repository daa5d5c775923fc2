"""Helpers for the browser tests (Playwright sync API)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def shot(page: Any, name: str, full_page: bool = False) -> Path:
    """Save a screenshot of ``page`` as ``tests/e2e/artifacts/<name>.png`` (git-ignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def login(page: Any, base_url: str, username: str, password: str) -> None:
    """Log in through the REST API from inside the page (sets the session cookie of the
    page's context), so tests that are not about the login form start logged in. The CSRF
    token is kept in sessionStorage under ``pacsbox.csrf`` where the web app looks for it."""
    if not page.url.startswith(base_url):
        page.goto(f"{base_url}/health")
    result = page.evaluate(
        """async ([u, p]) => {
            const r = await fetch('/api/login', {method: 'POST',
                headers: {'Content-Type': 'application/json'},
                body: JSON.stringify({username: u, password: p})});
            const body = await r.json();
            if (r.ok && body.csrf_token) sessionStorage.setItem('pacsbox.csrf', body.csrf_token);
            return {status: r.status, body};
        }""",
        [username, password],
    )
    if result["status"] != 200:
        raise AssertionError(f"login of {username!r} failed: {result}")
