"""The static files of the browser application (pacsbox.web.ui): public, right MIME types,
a Content-Security-Policy without inline scripts, ETag revalidation, nothing outside ui/, and
no Basic challenge on the application's own 401s."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pacsbox.web.app import PUBLIC_ROUTES, create_app
from pacsbox.web.ui import UI_DIR


@pytest.fixture
def client(sqlite_archive) -> Iterator[TestClient]:  # noqa: ANN001
    with TestClient(create_app(sqlite_archive)) as c:
        yield c


def _csp(response) -> dict[str, str]:  # noqa: ANN001
    out = {}
    for part in response.headers["content-security-policy"].split(";"):
        name, _, value = part.strip().partition(" ")
        out[name] = value
    return out


def test_index_is_public_with_a_strict_csp(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script type="module" src="/ui/app.js">' in r.text
    csp = _csp(r)
    assert csp["default-src"] == "'self'"
    assert csp["script-src"] == "'self'" and "unsafe" not in r.headers["content-security-policy"]
    assert csp["object-src"] == "'none'"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-cache"
    assert "/" in PUBLIC_ROUTES and "/ui/{path:path}" in PUBLIC_ROUTES


@pytest.mark.parametrize(
    ("path", "mime"),
    [
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/pages/list.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/i18n/it.json", "application/json"),
        ("/ui/icon.svg", "image/svg+xml"),
    ],
)
def test_assets_have_their_mime_type(client: TestClient, path: str, mime: str) -> None:
    r = client.get(path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == mime
    assert r.content == (UI_DIR / path.removeprefix("/ui/")).read_bytes()


def test_etag_revalidation(client: TestClient) -> None:
    r = client.get("/ui/app.js")
    etag = r.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    again = client.get("/ui/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert client.get("/ui/app.js", headers={"If-None-Match": '"other"'}).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/ui/nope.js",
        "/ui/pages",  # a directory
        "/ui/pages/",
        "/ui/README",  # no extension
        "/ui/app.py",  # unknown type
        "/ui/%2e%2e/ui.py",
        "/ui/..%2fui.py",
        "/ui/pages/..%2f..%2fui.py",
        "/ui//etc/passwd",
        "/ui/%2fetc%2fpasswd.json",
        "/ui/i18n/en.json%00.js",
        "/ui/app.js/",
        "/ui/" + "a" * 300 + ".js",
    ],
)
def test_unknown_and_hostile_paths_are_refused(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code in (400, 404), (path, r.status_code)
    body = r.json()
    assert body["error"]["status"] == r.status_code


def test_a_symlink_out_of_the_folder_is_not_followed(client: TestClient, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": 1}')
    link = UI_DIR / "zz-test-link.json"
    try:
        link.symlink_to(secret)
    except OSError:
        pytest.skip("cannot create a symlink in the package folder")
    try:
        assert client.get("/ui/zz-test-link.json").status_code == 404
    finally:
        link.unlink()


def test_login_redirects_to_the_application(client: TestClient) -> None:
    r = client.get("/login", follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"] == "/#/login"


def test_the_application_gets_no_basic_challenge(client: TestClient) -> None:
    plain = client.get("/api/me")
    assert plain.status_code == 401 and plain.headers["www-authenticate"].startswith("Basic")
    ui = client.get("/api/me", headers={"X-Requested-With": "pacsbox-ui"})
    assert ui.status_code == 401 and "www-authenticate" not in ui.headers
    assert ui.json()["error"]["status"] == 401


def test_translations_are_complete_and_every_key_used_exists() -> None:
    """Every UI string is translatable: en and it have the same keys, and each literal
    t('key') in the modules is in the dictionary."""
    en = json.loads((UI_DIR / "i18n" / "en.json").read_text())
    it = json.loads((UI_DIR / "i18n" / "it.json").read_text())
    assert set(en) == set(it)
    assert all(v.strip() for v in it.values())
    used: set[str] = set()
    for js in UI_DIR.rglob("*.js"):
        used |= set(re.findall(r"\bt\('([a-z_0-9]+\.[a-z_0-9.]+)'", js.read_text()))
    assert used, "no t('...') calls found"
    assert sorted(used - set(en)) == []


def test_no_external_urls_in_the_application() -> None:
    """No CDN, no external fonts: the shell loads only from its own origin."""
    for f in UI_DIR.rglob("*"):
        if f.suffix in {".js", ".css", ".html"}:
            text = f.read_text()
            assert not re.search(r"(src|href)\s*=\s*[\"']https?://", text), f
            assert "@import" not in text and "fonts.googleapis" not in text, f


def test_every_registered_page_exists_and_renders_something() -> None:
    """pages/registry.js is the one list of pages: each module is there, exports render(),
    and its title is translated."""
    registry = (UI_DIR / "pages" / "registry.js").read_text()
    en = json.loads((UI_DIR / "i18n" / "en.json").read_text())
    entries = re.findall(
        r"\{route: '([a-z-]+)', module: '\./([a-z-]+\.js)', title: '([^']+)'", registry
    )
    assert len(entries) >= 15
    routes = [r for r, _m, _t in entries]
    assert len(routes) == len(set(routes))
    for route, module, title in entries:
        source = (UI_DIR / "pages" / module).read_text()
        assert re.search(r"^export (async )?function render\(", source, re.M), module
        assert title in en, (route, title)
