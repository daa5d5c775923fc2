"""The OHIF viewer's static files under /viewer/ohif/ and the SR report / encapsulated
document routes (SPEC E5): media types, pre-compressed gzip, caching, client-route
fallback, path tricks, not-installed error, privileges and audit."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from pacsbox.archive.users import UserDirectory
from pacsbox.web import viewer
from pacsbox.web.app import create_app
from tests.unit.test_sr_report import HOSTILE, make_pdf, make_sr, minimal_pdf

VIEWER = ("vera", "viewer-pass-1")
NOVIEW = ("uma", "upload-pass-1")
INDEX = b"<!doctype html><title>ohif</title>" + b"x" * 2000
BUNDLE = b"/* app */" + b"console.log(1);" * 400


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def fake_ohif(tmp_path: Path) -> Path:
    """A small stand-in for the installed build (same layout as fetch_ohif.py writes)."""
    root = tmp_path / "ohif"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_bytes(INDEX)
    (root / "index.html.gz").write_bytes(gzip.compress(INDEX, mtime=0))
    (root / "app.bundle.0f6159c501addfe9.js").write_bytes(BUNDLE)
    (root / "app.bundle.0f6159c501addfe9.js.gz").write_bytes(gzip.compress(BUNDLE, mtime=0))
    (root / "app-config.js").write_bytes(b"window.config = {};")
    (root / "0ddf166f7a343eda.wasm").write_bytes(b"\0asm\1\0\0\0")
    (root / "a34f9d1faa5f3315.woff2").write_bytes(b"wOF2")
    (root / "assets" / "favicon.ico").write_bytes(b"\0\0\1\0")
    (root / "manifest.json").write_text(json.dumps({"name": "x"}))
    (root / ".pacsbox-ohif.json").write_text('{"version": "test"}')
    (tmp_path / "secret.txt").write_text("outside the viewer folder")
    return root


@pytest.fixture
def client(sqlite_archive, fake_ohif: Path) -> Iterator[TestClient]:  # noqa: ANN001
    users = UserDirectory(sqlite_archive.engine)
    users.add(VIEWER[0], "viewer", VIEWER[1])
    users.add_role("uploader", "upload")
    users.add(NOVIEW[0], "uploader", NOVIEW[1])
    app = create_app(sqlite_archive)
    app.state.ohif_dir = fake_ohif
    with TestClient(app) as c:
        c.archive = sqlite_archive  # type: ignore[attr-defined]
        yield c


def test_files_with_media_types_and_cache(client: TestClient) -> None:
    plain = {"Accept-Encoding": "identity"}
    cases = {
        "app.bundle.0f6159c501addfe9.js": ("text/javascript; charset=utf-8", viewer.LONG_CACHE),
        "0ddf166f7a343eda.wasm": ("application/wasm", viewer.LONG_CACHE),
        "a34f9d1faa5f3315.woff2": ("font/woff2", viewer.LONG_CACHE),
        "app-config.js": ("text/javascript; charset=utf-8", "no-cache"),
        "manifest.json": ("application/json", "no-cache"),
        "assets/favicon.ico": ("image/x-icon", "no-cache"),
    }
    for name, (ctype, cache) in cases.items():
        r = client.get(f"/viewer/ohif/{name}", headers=plain)  # no credentials: public
        assert r.status_code == 200, (name, r.text)
        assert r.headers["content-type"] == ctype, name
        assert r.headers["cache-control"] == cache, name
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "content-encoding" not in r.headers
    assert client.get("/viewer/ohif/0ddf166f7a343eda.wasm").content == b"\0asm\1\0\0\0"


def test_precompressed_gzip(client: TestClient) -> None:
    name = "/viewer/ohif/app.bundle.0f6159c501addfe9.js"
    r = client.get(name, headers={"Accept-Encoding": "gzip, deflate, br"})
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip"
    assert r.headers["vary"] == "Accept-Encoding"
    assert int(r.headers["content-length"]) < len(BUNDLE) / 5  # the .gz file went out
    assert r.content == BUNDLE  # httpx decodes it: the same bytes
    for refuse in ("identity", "gzip;q=0", "br", ""):
        r = client.get(name, headers={"Accept-Encoding": refuse})
        assert "content-encoding" not in r.headers, refuse
        assert int(r.headers["content-length"]) == len(BUNDLE)
    # files without a .gz sibling go out as they are
    r = client.get("/viewer/ohif/app-config.js", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in r.headers
    # the .gz siblings themselves are not files of the app
    assert client.get(name + ".gz").status_code == 404


def test_conditional_get(client: TestClient) -> None:
    name = "/viewer/ohif/app-config.js"
    first = client.get(name)
    etag = first.headers["etag"]
    r = client.get(name, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b""
    assert client.get(name, headers={"If-None-Match": '"other"'}).status_code == 200
    # gzip and identity are different representations: different validators
    a = client.get("/viewer/ohif/", headers={"Accept-Encoding": "gzip"}).headers["etag"]
    b = client.get("/viewer/ohif/", headers={"Accept-Encoding": "identity"}).headers["etag"]
    assert a != b


def test_client_routes_answer_index(client: TestClient) -> None:
    for path in (
        "/viewer/ohif/",
        "/viewer/ohif/index.html",
        "/viewer/ohif/viewer?StudyInstanceUIDs=1.2.3.4",
        "/viewer/ohif/viewer/dicomweb?StudyInstanceUIDs=1.2.3&SeriesInstanceUIDs=1.2.3.5",
        "/viewer/ohif/segmentation",
        "/viewer/ohif/localbasic",
    ):
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.content == INDEX, path
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert r.headers["cache-control"] == "no-cache"
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'self'" in csp
    r = client.get("/viewer/ohif", follow_redirects=False)
    assert r.status_code == 308 and r.headers["location"] == "/viewer/ohif/"
    assert client.head("/viewer/ohif/viewer").status_code == 200


def test_missing_files_and_path_tricks(client: TestClient) -> None:
    # a missing file is a 404, not the app page
    for path in ("nope.js", "assets/none.png", "x.bundle.0123456789abcdef.js", "a/b.wasm"):
        r = client.get(f"/viewer/ohif/{path}")
        assert r.status_code == 404, path
        assert r.json()["error"]["status"] == 404
    # traversal and hidden files: refused before or by the route, never served
    for raw in (
        "/viewer/ohif/../secret.txt",
        "/viewer/ohif/%2e%2e/secret.txt",
        "/viewer/ohif/assets/..%2f..%2fsecret.txt",
        "/viewer/ohif/.pacsbox-ohif.json",
        "/viewer/ohif/%2epacsbox-ohif.json",
        "/viewer/ohif/..%5c..%5csecret.txt",
        "/viewer/ohif/assets%5c..%5c..%5csecret.txt",
        "/viewer/ohif/%00.js",
    ):
        r = client.get(raw)
        assert r.status_code in (400, 404), (raw, r.status_code)
        assert b"outside the viewer" not in r.content and b"version" not in r.content
        assert r.json()["error"]["status"] == r.status_code


def test_not_installed(client: TestClient, tmp_path: Path) -> None:
    client.app.state.ohif_dir = tmp_path / "absent"  # type: ignore[attr-defined]
    r = client.get("/viewer/ohif/viewer?StudyInstanceUIDs=1.2.3")
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert "make viewer" in message and "fetch_ohif.py" in message


@pytest.mark.skipif(
    not (viewer.OHIF_DIR / "index.html").is_file(), reason="OHIF not installed (make viewer)"
)
def test_installed_build_is_rebased() -> None:
    """The real install (scripts/fetch_ohif.py): everything points below /viewer/ohif/, our
    app-config names only this origin, big bundles have .gz siblings."""
    root = viewer.OHIF_DIR
    html = (root / "index.html").read_text()
    assert 'window.PUBLIC_URL="/viewer/ohif/"' in html
    assert 'src="/app' not in html and 'href="/assets' not in html
    assert "init-service-worker" not in html
    config = (root / "app-config.js").read_text()
    assert "routerBasename: '/viewer/ohif'" in config
    assert "http" not in config.replace("httpErrorHandler", "")  # no external URL
    assert "'ohif.tours': { $set: [] }" in config
    guard = (root / "pacsbox-guard.js").read_text()
    assert "/api/me" in guard and "X-Requested-With" in guard and "pacsbox-ui" in guard
    assert html.index("pacsbox-guard.js") < html.index("app-config.js") < html.index("app.bundle")
    bundles = list(root.glob("app.bundle.*.js"))
    assert len(bundles) == 1 and (root / (bundles[0].name + ".gz")).is_file()
    assert '__webpack_require__.p = "/viewer/ohif/";' in bundles[0].read_text()
    assert not (root / "ort").exists() and not list(root.glob("*.map"))
    stamp = json.loads((root / ".pacsbox-ohif.json").read_text())
    assert stamp["version"] == "3.13.2" and stamp["integrity"].startswith("sha512-")


# == SR report and encapsulated document =================================================
def _store(client: TestClient, ds, tmp_path: Path) -> None:  # noqa: ANN001
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    client.archive.ingest.store_file(path)  # type: ignore[attr-defined]


def _audit_rows(client: TestClient) -> list[tuple[str, str, str, str]]:
    from pacsbox.archive.audit import AUDIT

    with client.archive.engine.connect() as conn:  # type: ignore[attr-defined]
        return [
            tuple(r)
            for r in conn.execute(
                select(AUDIT.c.action, AUDIT.c.username, AUDIT.c.sop_uid, AUDIT.c.detail)
            )
        ]


def test_sr_report(client: TestClient, tmp_path: Path) -> None:
    ds = make_sr(text=HOSTILE + " first line")
    _store(client, ds, tmp_path)
    url = f"/api/instances/{ds.SOPInstanceUID}/report"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=basic(*NOVIEW)).status_code == 403
    r = client.get(url, headers=basic(*VIEWER))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "Diagnostic Imaging Report" in r.text and "Lesion diameter" in r.text
    assert "&lt;script&gt;" in r.text and "<script>" not in r.text
    assert ("read", "vera", ds.SOPInstanceUID, "SR report (HTML)") in _audit_rows(client)


def test_pdf_document(client: TestClient, tmp_path: Path) -> None:
    pdf = minimal_pdf("pacsbox integration PDF") + b"!"  # odd length
    ds = make_pdf(pdf)
    _store(client, ds, tmp_path)
    url = f"/api/instances/{ds.SOPInstanceUID}/document"
    assert client.get(url).status_code == 401
    r = client.get(url, headers=basic(*VIEWER))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf"
    assert r.headers["content-disposition"] == f'inline; filename="{ds.SOPInstanceUID}.pdf"'
    assert r.content == pdf
    assert "content-security-policy" not in r.headers  # Chromium's PDF viewer needs none
    assert ("read", "vera", ds.SOPInstanceUID, "encapsulated document (application/pdf)") in (
        _audit_rows(client)
    )
    # a PDF is not a report, an SR has no document: 422 with the reason
    r = client.get(f"/api/instances/{ds.SOPInstanceUID}/report", headers=basic(*VIEWER))
    assert r.status_code == 422 and "not a Structured Report" in r.json()["error"]["message"]
    sr = make_sr()
    _store(client, sr, tmp_path)
    r = client.get(f"/api/instances/{sr.SOPInstanceUID}/document", headers=basic(*VIEWER))
    assert r.status_code == 422 and "Encapsulated Document" in r.json()["error"]["message"]


def test_active_content_is_never_inline(client: TestClient, tmp_path: Path) -> None:
    page = b"<html><script>document.cookie</script></html>"
    ds = make_pdf(page, mime="text/html")
    _store(client, ds, tmp_path)
    r = client.get(f"/api/instances/{ds.SOPInstanceUID}/document", headers=basic(*VIEWER))
    assert r.status_code == 200
    assert r.headers["content-disposition"].startswith("attachment;")
    assert r.headers["content-security-policy"].startswith("sandbox")
    assert r.headers["x-content-type-options"] == "nosniff"


def test_bad_and_unknown_uids(client: TestClient) -> None:
    h = basic(*VIEWER)
    for tail in ("report", "document"):
        r = client.get(f"/api/instances/1.2.3.999/{tail}", headers=h)
        assert r.status_code == 404 and "no instance" in r.json()["error"]["message"]
        for bad in ("1.2.abc", "1." + "1" * 70, "1.2.3'--", "%3Cx%3E"):
            r = client.get(f"/api/instances/{bad}/{tail}", headers=h)
            assert r.status_code in (400, 404), (bad, r.status_code)
            assert r.json()["error"]["status"] == r.status_code


def test_missing_file_is_404(client: TestClient, tmp_path: Path) -> None:
    ds = make_pdf()
    _store(client, ds, tmp_path)
    from pacsbox.archive.sr_report import find_instance

    item = find_instance(
        client.archive.engine,  # type: ignore[attr-defined]
        client.archive.store,  # type: ignore[attr-defined]
        ds.SOPInstanceUID,
    )
    assert item is not None
    item.path.unlink()
    r = client.get(f"/api/instances/{ds.SOPInstanceUID}/document", headers=basic(*VIEWER))
    assert r.status_code == 404 and "missing from storage" in r.json()["error"]["message"]


# == scripts/fetch_ohif.py on a synthetic tarball (no network) ============================
def _fetch_module():  # noqa: ANN202
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "fetch_ohif.py"
    spec = importlib.util.spec_from_file_location("fetch_ohif", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_tarball(path: Path, members: dict[str, bytes]) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


FAKE_INDEX = (
    b'<!doctype html><html><head><script>window.PUBLIC_URL="/"</script>'
    b'<link rel="manifest" href="/manifest.json">'
    b'<script rel="preload" as="script" src="/app-config.js"></script>'
    b'<script rel="preload" as="script" type="module" src="/init-service-worker.js"></script>'
    b"<title>OHIF Viewer</title>"
    b'<script defer src="/app.bundle.0123456789abcdef.js"></script>'
    b'<link href="/app.bundle.css" rel="stylesheet"></head><body></body></html>'
)
RUNTIME = b'__webpack_require__.p = "/";\n' + b"/* code */\n" * 200


def _fake_members(**changes: bytes | None) -> dict[str, bytes]:
    members = {
        "package/LICENSE": b"MIT",
        "package/package.json": b"{}",
        "package/dist/index.html": FAKE_INDEX,
        "package/dist/app.bundle.0123456789abcdef.js": RUNTIME,
        "package/dist/compute.bundle.fedcba9876543210.js": RUNTIME,
        "package/dist/app.bundle.css": b"@font-face{src:url(/a34f9d1faa5f3315.woff2)}",
        "package/dist/manifest.json": b'{"icons": [{"src": "/assets/a.png"}]}',
        "package/dist/app-config.js": b"window.config = {dataSources: ['https://demo']};",
        "package/dist/app.bundle.0123456789abcdef.js.map": b"{}",
        "package/dist/sw.js": b"self.x = 1;",
        "package/dist/init-service-worker.js": b"importScripts('https://cdn');",
        "package/dist/ort/big.wasm": b"\0asm",
        "package/dist/dicom-microscopy-viewer/x.js": b"x",
        "package/dist/assets/a.png": b"png",
    }
    for name, value in changes.items():
        key = "package/dist/" + name.replace("__", "/")
        if value is None:
            members.pop(key, None)
        else:
            members[key] = value
    return members


def test_fetch_script_installs_patched_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fetch = _fetch_module()
    tarball = _fake_tarball(tmp_path / "app.tgz", _fake_members())
    monkeypatch.setattr(fetch, "INTEGRITY", fetch.integrity_of(tarball))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dest = tmp_path / "static" / "ohif"
    assert fetch.main(["--dest", str(dest), "--tarball", str(tarball)]) == 0
    html = (dest / "index.html").read_text()
    assert 'window.PUBLIC_URL="/viewer/ohif/"' in html
    assert 'src="/viewer/ohif/app.bundle.0123456789abcdef.js"' in html
    assert 'href="/viewer/ohif/app.bundle.css"' in html and "init-service-worker" not in html
    assert html.index("pacsbox-guard.js") < html.index("app-config.js")
    for bundle in ("app.bundle.0123456789abcdef.js", "compute.bundle.fedcba9876543210.js"):
        assert '__webpack_require__.p = "/viewer/ohif/";' in (dest / bundle).read_text()
    assert "url(/viewer/ohif/a34f9d1faa5f3315.woff2)" in (dest / "app.bundle.css").read_text()
    assert '"/viewer/ohif/assets/a.png"' in (dest / "manifest.json").read_text()
    config = (dest / "app-config.js").read_text()
    assert "https://" not in config and "routerBasename: '/viewer/ohif'" in config
    assert (dest / "LICENSE.ohif.txt").read_bytes() == b"MIT"
    for dropped in ("sw.js", "init-service-worker.js", "ort", "dicom-microscopy-viewer"):
        assert not (dest / dropped).exists(), dropped
    assert not list(dest.glob("*.map"))
    gz = dest / "app.bundle.0123456789abcdef.js.gz"
    assert gzip.decompress(gz.read_bytes()) == (dest / gz.name[:-3]).read_bytes()
    # a second run is a no-op (the stamp matches); --force reinstalls
    stamp = dest / ".pacsbox-ohif.json"
    before = stamp.stat().st_mtime_ns
    capsys.readouterr()
    assert fetch.main(["--dest", str(dest), "--tarball", str(tarball)]) == 0
    assert "already installed" in capsys.readouterr().out
    assert stamp.stat().st_mtime_ns == before
    assert fetch.main(["--dest", str(dest), "--tarball", str(tarball), "--force"]) == 0
    assert stamp.stat().st_mtime_ns != before
    # the cached tarball is used without network
    cached = tmp_path / "cache" / "pacsbox" / f"ohif-app-{fetch.VERSION}.tgz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(tarball.read_bytes())
    other = tmp_path / "other"
    monkeypatch.setattr(fetch, "TARBALL_URL", "http://127.0.0.1:9/unreachable.tgz")
    assert fetch.main(["--dest", str(other)]) == 0
    assert (other / "index.html").is_file()


def test_fetch_script_refuses_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fetch = _fetch_module()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dest = tmp_path / "ohif"
    good = _fake_tarball(tmp_path / "good.tgz", _fake_members())
    monkeypatch.setattr(fetch, "INTEGRITY", fetch.integrity_of(good))
    assert fetch.main(["--dest", str(dest), "--tarball", str(good)]) == 0
    # a tarball that is not the pinned one: exit 2, the install stays as it was
    bad = _fake_tarball(tmp_path / "bad.tgz", _fake_members(**{"sw.js": b"changed"}))
    assert fetch.main(["--dest", str(dest), "--tarball", str(bad), "--force"]) == 2
    assert "does not match the pinned integrity" in capsys.readouterr().err
    assert (dest / "index.html").is_file()
    # no network and no cache: a clear error naming the way out
    monkeypatch.setattr(fetch, "TARBALL_URL", "http://127.0.0.1:9/unreachable.tgz")
    assert fetch.main(["--dest", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "cannot download" in err and "--tarball" in err and "npm pack" in err
    # a build whose patch points moved (new OHIF): exit 3, nothing half-installed
    for changes in (
        {"app.bundle.0123456789abcdef.js": b"no runtime here"},
        {"index.html": FAKE_INDEX.replace(b"PUBLIC_URL", b"BASE_URL")},
    ):
        moved = _fake_tarball(tmp_path / "moved.tgz", _fake_members(**changes))
        monkeypatch.setattr(fetch, "INTEGRITY", fetch.integrity_of(moved))
        assert fetch.main(["--dest", str(dest), "--tarball", str(moved), "--force"]) == 3
        assert "changed shape" in capsys.readouterr().err
        assert '"/viewer/ohif/"' in (dest / "index.html").read_text()  # the old one
    assert not list(tmp_path.glob(".ohif-staging-*"))
    # member names that would leave the folder are refused
    evil = _fake_tarball(tmp_path / "evil.tgz", {**_fake_members(), "package/../../evil": b"x"})
    monkeypatch.setattr(fetch, "INTEGRITY", fetch.integrity_of(evil))
    assert fetch.main(["--dest", str(tmp_path / "e"), "--tarball", str(evil)]) == 3
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()
