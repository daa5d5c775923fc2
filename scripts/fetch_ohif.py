#!/usr/bin/env python3
"""Install the OHIF viewer (SPEC E5) into ``src/pacsbox/web/static/ohif/``.

Downloads the prebuilt ``@ohif/app`` npm tarball (pinned version, pinned sha512 integrity as
published by the registry), takes its ``package/dist`` static build, drops what pacsbox does
not use (source maps, onnxruntime, the microscopy viewer, the service worker, demo configs),
patches the hard-coded ``/`` public path to ``/viewer/ohif/`` (webpack runtime of the app and
worker bundles, index.html, CSS ``url()``, manifest icons), writes pacsbox's own
``app-config.js`` (one same-origin DICOMweb data source, no tours, no investigational-use
dialog, no external URL), writes ``.gz`` siblings for compressible files, and installs the
result atomically. A stamp file (``.pacsbox-ohif.json``: version, integrity, hash of this
script) makes a second run a no-op.

The tarball is cached under ``$XDG_CACHE_HOME/pacsbox`` (default ``~/.cache/pacsbox``);
with a valid cached tarball no network is needed. Usage::

    python scripts/fetch_ohif.py [--dest DIR] [--force] [--tarball FILE]

Exit status 0 on success (or nothing to do), 2 when the tarball cannot be obtained or does
not match the pinned hash, 3 when the build no longer has the shape the patches expect.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

VERSION = "3.13.2"
#: ``npm view @ohif/app@3.13.2 dist.integrity``
INTEGRITY = (
    "sha512-"
    "WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
)
TARBALL_URL = f"https://registry.npmjs.org/@ohif/app/-/app-{VERSION}.tgz"
BASE = "/viewer/ohif/"
STAMP_NAME = ".pacsbox-ohif.json"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO / "src" / "pacsbox" / "web" / "static" / "ohif"

#: top-level entries of dist/ that are not installed
DROP_TOP = {
    "ort",  # onnxruntime (AI segmentation), 136 MB
    "dicom-microscopy-viewer",  # whole-slide microscopy, 20 MB
    "customizations",  # ?customization= files; URL customizations are off in our config
    "sw.js",  # service worker (caches everything; pacsbox serves with its own headers)
    "init-service-worker.js",  # would load workbox from a CDN
    "google.js",  # Google Cloud Healthcare demo config
    "serve.json",
    "_redirects",
    "_headers",
    "silent-refresh.html",  # OpenID Connect, unused
    "oidc-client.min.js",
    "es6-shim.min.js",
    "polyfill.min.js",
}
DROP_SUFFIXES = (".map", ".LICENSE.txt")
#: files worth a pre-compressed .gz sibling
GZIP_SUFFIXES = (".js", ".css", ".html", ".json", ".svg", ".wasm", ".ico", ".xml", ".webapp")
GZIP_MIN_BYTES = 512

WEBPACK_PUBLIC_PATH = '__webpack_require__.p = "/";'

APP_CONFIG = """/* pacsbox: OHIF configuration, written by scripts/fetch_ohif.py (do not edit here).
 * One DICOMweb data source on this same origin (the session cookie goes along);
 * no external URL, no tours, no investigational-use dialog. */
(function () {
  var origin = window.location.origin;
  window.config = {
    name: 'pacsbox',
    routerBasename: '/viewer/ohif',
    extensions: [],
    modes: [],
    customizationService: [
      { 'ohif.tours': { $set: [] } },
    ],
    investigationalUseDialog: { option: 'never' },
    whiteLabeling: {
      // the header logo: back to the pacsbox study list
      createLogoComponentFn: function (React) {
        return React.createElement(
          'a',
          {
            href: '/#/list',
            id: 'pacsbox-home',
            title: 'pacsbox study list',
            style: { color: '#5acce6', fontWeight: 600, fontSize: '18px', textDecoration: 'none' },
          },
          'pacsbox'
        );
      },
    },
    showStudyList: true,
    maxNumberOfWebWorkers: 3,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: true,
    showLoadingIndicator: true,
    strictZSpacingForVolumeViewport: true,
    groupEnabledModesFirst: true,
    maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 25 },
    showErrorDetails: 'always',
    defaultDataSourceName: 'pacsbox',
    dataSources: [
      {
        namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
        sourceName: 'pacsbox',
        configuration: {
          friendlyName: 'pacsbox',
          name: 'pacsbox',
          qidoRoot: origin + '/dicom-web',
          wadoRoot: origin + '/dicom-web',
          wadoUriRoot: origin + '/wado',
          qidoSupportsIncludeField: true,
          imageRendering: 'wadors',
          thumbnailRendering: 'thumbnail',
          thumbnailRequestStrategy: 'fetch',
          enableStudyLazyLoad: true,
          supportsFuzzyMatching: false,
          supportsWildcard: true,
          staticWado: false,
          singlepart: 'bulkdata,video',
          bulkDataURI: { enabled: true },
          omitQuotationForMultipartRequest: true,
        },
      },
    ],
    httpErrorHandler: function (error) {
      var status = error && error.status;
      if (status === 401) {
        window.pacsboxLogin();  // the session ended: log in again, then come back
        return;
      }
      console.warn('pacsbox: HTTP error', status);
    },
  };
})();
"""


GUARD_JS = """/* pacsbox: written by scripts/fetch_ohif.py. The viewer's data needs a pacsbox login:
 * before OHIF starts, ask /api/me (synchronously, so no request of OHIF can raise the
 * browser's own password dialog) and go to the pacsbox login page when there is no session;
 * after the login the pacsbox app opens the same studies again (#/viewer). */
(function () {
  function next() {
    var uids = new URLSearchParams(window.location.search).get('StudyInstanceUIDs');
    return uids ? '#/viewer?studyinstanceuid=' + encodeURIComponent(uids) : '#/list';
  }
  window.pacsboxLogin = function (route) {
    window.location.replace('/#/' + (route || 'login') + '?' +
      new URLSearchParams({ next: next() }).toString());
  };
  // Every same-origin request of OHIF carries the header the pacsbox app sends: a 401 (the
  // session ended while viewing) then comes without the Basic challenge, so the browser shows
  // no password dialog of its own and OHIF's error handler sends the user to the login.
  var HEADER = 'X-Requested-With';
  var VALUE = 'pacsbox-ui';
  function sameOrigin(url) {
    try {
      return new URL(String(url), window.location.href).origin === window.location.origin;
    } catch (e) {
      return false;
    }
  }
  var open = XMLHttpRequest.prototype.open;
  var send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url) {
    this.pacsboxSameOrigin = sameOrigin(url);
    return open.apply(this, arguments);
  };
  XMLHttpRequest.prototype.send = function () {
    if (this.pacsboxSameOrigin) {
      try { this.setRequestHeader(HEADER, VALUE); } catch (e) { /* already sent */ }
    }
    return send.apply(this, arguments);
  };
  var originalFetch = window.fetch;
  window.fetch = function (input, init) {
    var isRequest = typeof Request !== 'undefined' && input instanceof Request;
    if (sameOrigin(isRequest ? input.url : input)) {
      init = Object.assign({}, init);
      var headers = new Headers(init.headers || (isRequest ? input.headers : undefined));
      headers.set(HEADER, VALUE);
      init.headers = headers;
    }
    return originalFetch.call(this, input, init);
  };
  try {
    var xhr = new XMLHttpRequest();
    xhr.open('GET', '/api/me', false);
    xhr.send();
    if (xhr.status === 401) {
      window.pacsboxLogin('login');
    } else if (xhr.status === 200 && JSON.parse(xhr.responseText).user.must_change_password) {
      window.pacsboxLogin('password');
    }
  } catch (e) {
    console.warn('pacsbox: login check failed', e);
  }
})();
"""


class FetchError(Exception):
    """The tarball cannot be obtained or does not match the pinned integrity hash."""


class PatchError(Exception):
    """The build does not have the shape the patches expect (a new OHIF version?)."""


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "pacsbox"


def integrity_of(path: Path) -> str:
    """The npm ``dist.integrity`` string (sha512, base64) of a file."""
    digest = hashlib.sha512()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def script_hash() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def stamp_content() -> dict[str, str]:
    return {"package": "@ohif/app", "version": VERSION, "integrity": INTEGRITY,
            "script": script_hash(), "base": BASE}  # fmt: skip


def up_to_date(dest: Path) -> bool:
    try:
        return json.loads((dest / STAMP_NAME).read_text()) == stamp_content()
    except (OSError, ValueError):
        return False


def obtain_tarball(explicit: Path | None) -> Path:
    """The verified tarball: ``explicit``, else the cached copy, else a download into the
    cache. Raises FetchError with a message naming the cause."""
    if explicit is not None:
        if integrity_of(explicit) != INTEGRITY:
            raise FetchError(f"{explicit} does not match the pinned integrity {INTEGRITY}")
        return explicit
    cached = cache_dir() / f"ohif-app-{VERSION}.tgz"
    if cached.is_file():
        if integrity_of(cached) == INTEGRITY:
            return cached
        print(f"fetch_ohif: cached {cached} is damaged; downloading again", file=sys.stderr)
        cached.unlink()
    cached.parent.mkdir(parents=True, exist_ok=True)
    part = cached.with_suffix(".part")
    print(f"fetch_ohif: downloading {TARBALL_URL} (~50 MB)", file=sys.stderr)
    try:
        request = urllib.request.Request(TARBALL_URL, headers={"User-Agent": "pacsbox-fetch"})
        with urllib.request.urlopen(request, timeout=60) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        part.unlink(missing_ok=True)
        raise FetchError(
            f"cannot download {TARBALL_URL}: {exc}. Without network, put the tarball "
            f"(npm pack @ohif/app@{VERSION}) at {cached} or pass --tarball FILE."
        ) from exc
    got = integrity_of(part)
    if got != INTEGRITY:
        part.unlink(missing_ok=True)
        raise FetchError(f"downloaded tarball has integrity {got}, expected {INTEGRITY}")
    part.replace(cached)
    return cached


def _kept(rel: PurePosixPath) -> bool:
    if rel.parts[0] in DROP_TOP:
        return False
    return not rel.name.endswith(DROP_SUFFIXES)


def extract(tarball: Path, staging: Path) -> int:
    """Write the kept regular files of ``package/dist`` (and the licence) into ``staging``.
    Member names are checked: nothing can land outside ``staging``."""
    count = 0
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = PurePosixPath(member.name)
            if name.is_absolute() or ".." in name.parts:
                raise PatchError(f"unsafe member name in the tarball: {member.name!r}")
            if name.parts[:1] != ("package",):
                continue
            if name.parts[1:] == ("LICENSE",):
                rel = PurePosixPath("LICENSE.ohif.txt")
            elif name.parts[1:2] == ("dist",) and len(name.parts) > 2:
                rel = PurePosixPath(*name.parts[2:])
                if not _kept(rel):
                    continue
            else:
                continue
            target = staging.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            count += 1
    return count


def _replace(path: Path, old: str, new: str, minimum: int = 1) -> int:
    text = path.read_text(encoding="utf-8")
    n = text.count(old)
    if n < minimum:
        raise PatchError(f"{path.name}: expected {old!r} at least {minimum}x, found {n}x")
    if n:
        path.write_text(text.replace(old, new), encoding="utf-8")
    return n


def patch(staging: Path) -> dict[str, int]:
    """Rebase the build from ``/`` to BASE and install our app-config.js."""
    counts = {"bundles": 0, "index": 0, "css": 0, "manifest": 0}
    for js in staging.glob("*.js"):
        if WEBPACK_PUBLIC_PATH in js.read_text(encoding="utf-8"):
            counts["bundles"] += _replace(
                js, WEBPACK_PUBLIC_PATH, f'__webpack_require__.p = "{BASE}";'
            )
    app_bundles = list(staging.glob("app.bundle.*.js"))
    if len(app_bundles) != 1 or counts["bundles"] < 2:
        raise PatchError(f"webpack public path found in {counts['bundles']} bundle(s)")
    index = staging / "index.html"
    html = index.read_text(encoding="utf-8")
    sw = '<script rel="preload" as="script" type="module" src="/init-service-worker.js"></script>'
    if sw not in html:
        raise PatchError("index.html: service worker script tag not found")
    html = html.replace(sw, "")
    for old, new in (
        ('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{BASE}"'),
        ('src="/', f'src="{BASE}'),
        ('href="/', f'href="{BASE}'),
    ):
        n = html.count(old)
        if not n:
            raise PatchError(f"index.html: {old!r} not found")
        counts["index"] += n
        html = html.replace(old, new)
    html = html.replace("<title>OHIF Viewer</title>", "<title>pacsbox viewer (OHIF)</title>")
    config_tag = f'<script rel="preload" as="script" src="{BASE}app-config.js"></script>'
    if config_tag not in html:
        raise PatchError("index.html: app-config.js script tag not found")
    html = html.replace(config_tag, f'<script src="{BASE}pacsbox-guard.js"></script>' + config_tag)
    index.write_text(html, encoding="utf-8")
    for css in staging.glob("*.css"):
        counts["css"] += _replace(css, "url(/", f"url({BASE}", minimum=0)
    if not counts["css"]:
        raise PatchError("no url(/...) found in the CSS (fonts would not load)")
    counts["manifest"] = _replace(staging / "manifest.json", '"/assets/', f'"{BASE}assets/')
    for extra in ("assets/manifest.webapp", "assets/yandex-browser-manifest.json"):
        if (staging / extra).is_file():
            _replace(staging / extra, '"/assets/', f'"{BASE}assets/', minimum=0)
    (staging / "app-config.js").write_text(APP_CONFIG, encoding="utf-8")
    (staging / "pacsbox-guard.js").write_text(GUARD_JS, encoding="utf-8")
    return counts


def precompress(staging: Path) -> int:
    """A ``.gz`` sibling (deterministic: no name, mtime 0) for each compressible file when
    it saves at least 10 %."""
    written = 0
    for path in sorted(staging.rglob("*")):
        if not path.is_file() or not path.name.endswith(GZIP_SUFFIXES):
            continue
        data = path.read_bytes()
        if len(data) < GZIP_MIN_BYTES:
            continue
        packed = gzip.compress(data, compresslevel=9, mtime=0)
        if len(packed) <= 0.9 * len(data):
            path.with_name(path.name + ".gz").write_bytes(packed)
            written += 1
    return written


def install(tarball: Path, dest: Path) -> dict[str, int]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ohif-staging-", dir=dest.parent))
    try:
        files = extract(tarball, staging)
        counts = patch(staging)
        counts["files"] = files
        counts["gz"] = precompress(staging)
        (staging / STAMP_NAME).write_text(json.dumps(stamp_content(), indent=1) + "\n")
        old = dest.with_name(dest.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if dest.exists():
            dest.rename(old)
        staging.rename(dest)
        if old.exists():
            shutil.rmtree(old)
        return counts
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="install folder")
    parser.add_argument("--tarball", type=Path, help="use this @ohif/app tarball (verified)")
    parser.add_argument("--force", action="store_true", help="reinstall even if up to date")
    args = parser.parse_args(argv)
    dest: Path = args.dest.resolve()
    if not args.force and up_to_date(dest):
        print(f"fetch_ohif: OHIF {VERSION} already installed in {dest}")
        return 0
    try:
        tarball = obtain_tarball(args.tarball)
        counts = install(tarball, dest)
    except FetchError as exc:
        print(f"fetch_ohif: error: {exc}", file=sys.stderr)
        return 2
    except PatchError as exc:
        print(f"fetch_ohif: error: the OHIF build changed shape: {exc}", file=sys.stderr)
        return 3
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(
        f"fetch_ohif: installed OHIF {VERSION} in {dest}: {counts['files']} files "
        f"(+{counts['gz']} .gz), {size / 1e6:.1f} MB; patched {counts['bundles']} bundles, "
        f"{counts['index']} index.html refs, {counts['css']} CSS urls"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
