"""Fixtures for the browser tests: a running ``pacsbox serve`` and headless Debian Chromium
driven by Playwright (never a downloaded browser). Requests to any host other than the local
one are aborted, so a page that would reach the internet fails visibly instead of hanging."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.helpers import Server, free_port, server_env

CHROMIUM = os.environ.get("PACSBOX_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
ADMIN_PASSWORD = "e2e-Admin-pass-42"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
            if not any(m.name == "xdist_group" for m in item.iter_markers()):
                item.add_marker(pytest.mark.xdist_group("e2e"))


def _need_chromium() -> None:
    if shutil.which(CHROMIUM) or Path(CHROMIUM).exists():
        return
    reason = f"{CHROMIUM} is missing (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class Pacs:
    """A ``pacsbox serve`` for browser tests: admin's first password already changed."""

    server: Server
    url: str
    dicom_port: int
    admin_password: str = ADMIN_PASSWORD
    api: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.api = httpx.Client(base_url=self.url, auth=("admin", self.admin_password), timeout=60)

    def add_user(
        self, username: str, role: str, password: str, must_change: bool = False
    ) -> dict[str, Any]:
        r = self.api.post(
            "/api/users",
            json={
                "username": username,
                "password": password,
                "role": role,
                "must_change_password": must_change,
            },
        )
        assert r.status_code == 201, r.text
        return r.json()

    def store(self, paths: list[Path]) -> dict[str, Any]:
        """Upload DICOM files through ``POST /api/instances`` (in chunks of 50)."""
        stored: dict[str, Any] = {"stored": 0, "results": []}
        for i in range(0, len(paths), 50):
            files = [
                ("file", (p.name, p.read_bytes(), "application/dicom")) for p in paths[i : i + 50]
            ]
            r = self.api.post("/api/instances", files=files)
            assert r.status_code == 200, r.text
            body = r.json()
            stored["stored"] += body["stored"]
            stored["results"].extend(body["results"])
        return stored


def _wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer /health")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    """A running ``pacsbox serve`` (SQLite) with HTTP and DICOM on free local ports."""
    root = tmp_path_factory.mktemp("e2e-pacs")
    data_dir = root / "data"
    data_dir.mkdir()
    port, http_port = free_port(), free_port()
    env = server_env(data_dir, port, None, PACSBOX_HTTP_PORT=str(http_port))
    server = Server(data_dir, port, env).start()
    url = f"http://127.0.0.1:{http_port}"
    try:
        _wait_http(url)
        match = re.search(r"password:\s+(\S+)", server.log.read_text())
        assert match, server.log.read_text()[-2000:]
        with httpx.Client(base_url=url, timeout=30) as c:
            r = c.post("/api/login", json={"username": "admin", "password": match.group(1)})
            assert r.status_code == 200, r.text
            r = c.post(
                "/api/me/password",
                json={"current_password": match.group(1), "new_password": ADMIN_PASSWORD},
                headers={"X-CSRF-Token": r.json()["csrf_token"]},
            )
            assert r.status_code == 200, r.text
        pacs = Pacs(server, url, port)
        yield pacs
        pacs.api.close()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium under Playwright (one per test module)."""
    _need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _local_only(route: Any) -> None:
    host = urlsplit(route.request.url).hostname or ""
    # chrome:// and chrome-extension:// are the browser's own pages (its PDF viewer)
    if route.request.url.startswith(("data:", "blob:", "chrome")) or host in LOCAL_HOSTS:
        route.continue_()
    else:
        route.abort()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """Factory: a page in a fresh browser context (own cookies and storage); contexts are
    closed at teardown. Keyword arguments go to ``browser.new_context``."""
    contexts: list[Any] = []

    def factory(**kwargs: Any) -> Any:
        kwargs.setdefault("viewport", {"width": 1440, "height": 900})
        context = browser.new_context(**kwargs)
        context.route("**/*", _local_only)
        contexts.append(context)
        return context.new_page()

    yield factory
    for context in contexts:
        context.close()
