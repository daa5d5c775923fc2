"""The OHIF viewer under ``/viewer/ohif/`` and the report/document routes (SPEC E5).

``router`` serves the static OHIF build that ``scripts/fetch_ohif.py`` (``make viewer``)
installs in ``pacsbox/web/static/ohif/``:

- exact files with their media type (``.wasm`` as ``application/wasm``, RFC 9110 §8.3);
  the pre-compressed ``.gz`` sibling when the client accepts gzip (``Content-Encoding:
  gzip``, ``Vary: Accept-Encoding``, RFC 9110 §8.4 / §12.5.3); strong ETags with
  ``If-None-Match`` → 304; content-hashed bundles cached for a year (``immutable``),
  everything else revalidated (``no-cache``);
- ``index.html`` for any other path below the base that does not name a file (OHIF's client
  routes, e.g. ``/viewer/ohif/viewer?StudyInstanceUIDs=<uid>``);
- 404 JSON for a missing file, and when OHIF is not installed (naming ``make viewer``);
- path segments starting with ``.`` (the install stamp, ``..``), backslashes, NUL and
  anything resolving outside the folder are refused (400/404).

The static files are public (they hold no secret and no data); every study the viewer
shows comes through ``/dicom-web``, which needs the login session of the same origin.

``api_router`` (mounted under ``/api``) adds, with privilege ``view`` and audited reads:

- ``GET /api/instances/{sop_uid}/report``: any SR document rendered as HTML
  (:mod:`pacsbox.archive.sr_report`, PS3.3 §C.17.3) under a CSP that allows no script;
- ``GET /api/instances/{sop_uid}/document``: the Encapsulated Document (PS3.3 §A.45,
  §C.24.2) with the MIME type of (0042,0012), ``Content-Disposition: inline`` for PDF, plain
  text and images; other types (HTML, XML/CDA, SVG …) as an attachment in a sandbox so stored
  content can never run as a page of this origin.
"""

from __future__ import annotations

import mimetypes
import os
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from pacsbox.archive import sr_report
from pacsbox.archive.storage import InvalidUID, check_uid
from pacsbox.web.auth import Principal, context, require

BASE = "/viewer/ohif"
OHIF_DIR = Path(__file__).resolve().parent / "static" / "ohif"
NOT_INSTALLED = (
    "the OHIF viewer is not installed: run `make viewer` (or `python scripts/fetch_ohif.py`) "
    "in the pacsbox source tree"
)

#: media types by suffix (RFC 9110 §8.3); mimetypes fills in the rest
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".webapp": "application/x-web-app-manifest+json",
    ".wasm": "application/wasm",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ttf": "font/ttf",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".xml": "application/xml",
    ".txt": "text/plain; charset=utf-8",
}
#: a final segment with one of these suffixes names a file: 404 when missing, no index.html
FILE_SUFFIXES = frozenset({*MEDIA_TYPES, ".map", ".gz", ".jpg", ".jpeg", ".gif", ".webp"})
#: webpack output names carry a content hash: ``app.bundle.0f6159c501addfe9.js``,
#: ``0ddf166f7a343eda.wasm`` — safe to cache forever
HASHED = re.compile(r"(^|\.)[0-9a-f]{16,}\.(js|css|wasm|woff2?)$")
LONG_CACHE = "public, max-age=31536000, immutable"

#: the OHIF page: own origin only (no external fetch, frame or script); OHIF needs eval
#: (its expression parser), WebAssembly (codecs) and blob: workers/frames (PDF viewport)
VIEWER_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' "
    "'wasm-unsafe-eval' blob:; worker-src 'self' blob:; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self' data: blob:; "
    "media-src 'self' blob: data:; frame-src 'self' blob:; object-src 'self' blob:; "
    "frame-ancestors 'self'; base-uri 'self'; form-action 'self'"
)

router = APIRouter()
api_router = APIRouter()


def ohif_root(request: Request) -> Path:
    """The install folder (``app.state.ohif_dir`` overrides it, for tests)."""
    return Path(getattr(request.app.state, "ohif_dir", None) or OHIF_DIR)


def _accepts_gzip(header: str | None) -> bool:
    for part in (header or "").split(","):
        token, _, params = part.strip().partition(";")
        if token.strip().lower() not in ("gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        return q > 0
    return False


def _media_type(name: str) -> str:
    suffix = os.path.splitext(name)[1].lower()
    return MEDIA_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def _etag(stat: os.stat_result) -> str:
    return f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'


def _not_modified(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    return header.strip() == "*" or etag in [t.strip() for t in header.split(",")]


def _file_response(request: Request, path: Path, name: str, cache: str) -> Response:
    """``path`` (or its .gz sibling) with media type, caching and conditional GET."""
    headers = {
        "Cache-Control": cache,
        "X-Content-Type-Options": "nosniff",
        "Vary": "Accept-Encoding",
    }
    if name.endswith(".html"):
        headers["Content-Security-Policy"] = VIEWER_CSP
        headers["Referrer-Policy"] = "same-origin"
    served = path
    gz = path.with_name(path.name + ".gz")
    if _accepts_gzip(request.headers.get("accept-encoding")) and gz.is_file():
        served = gz
        headers["Content-Encoding"] = "gzip"
    stat = served.stat()
    etag = _etag(stat)
    headers["ETag"] = etag
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    return FileResponse(served, media_type=_media_type(name), headers=headers, stat_result=stat)


def _resolve(root: Path, rel: str) -> Path | None:
    """The file ``rel`` names inside ``root`` (None when it is not a file there)."""
    candidate = (root / rel).resolve()
    if not candidate.is_relative_to(root.resolve()) or not candidate.is_file():
        return None
    return candidate


def serve(request: Request, rel: str) -> Response:
    root = ohif_root(request)
    index = root / "index.html"
    if not index.is_file():
        raise HTTPException(404, NOT_INSTALLED)
    if "\\" in rel or "\x00" in rel:
        raise HTTPException(400, "bad path")
    segments = [s for s in rel.split("/") if s]
    if any(s.startswith(".") for s in segments):
        raise HTTPException(404, "no such file")  # dot-files (install stamp), "..", "."
    rel = "/".join(segments)
    if rel and rel != "index.html":
        path = _resolve(root, rel)
        if path is not None:
            if path.name.endswith(".gz"):
                raise HTTPException(404, "no such file")  # only served as Content-Encoding
            cache = LONG_CACHE if HASHED.search(path.name) else "no-cache"
            return _file_response(request, path, path.name, cache)
        if os.path.splitext(segments[-1])[1].lower() in FILE_SUFFIXES:
            raise HTTPException(404, f"no such file: {rel[:200]}")
    # the app's own page, also for its client-side routes (/viewer, /segmentation, ...)
    return _file_response(request, index, "index.html", "no-cache")


@router.api_route(BASE, methods=["GET", "HEAD"], include_in_schema=False)
def viewer_base() -> RedirectResponse:
    """``/viewer/ohif`` → ``/viewer/ohif/`` (relative URLs of the app need the slash)."""
    return RedirectResponse(BASE + "/", status_code=308)


@router.api_route(
    BASE + "/{path:path}",
    methods=["GET", "HEAD"],
    include_in_schema=False,  # public static files, like the UI's /ui/{path:path}
)
def viewer_file(path: str, request: Request) -> Response:
    """Public: the viewer's static files. ``/viewer/ohif/viewer?StudyInstanceUIDs=<uid>``
    opens a study (the data itself needs a login: it comes from ``/dicom-web``)."""
    return serve(request, path)


# == reports and documents ===================================================================
def _sop(value: str) -> str:
    try:
        return check_uid(value, "SOP Instance UID")
    except InvalidUID as exc:
        raise HTTPException(400, str(exc)) from exc


def _load(request: Request, sop_uid: str) -> tuple[sr_report.StoredInstance, Any]:
    """The instance and its data set up to Pixel Data (an SR or an encapsulated document
    needs nothing after it; a large image is then not read)."""
    ctx = context(request)
    uid = _sop(sop_uid)
    try:
        found = sr_report.load_instance(
            ctx.archive.engine, ctx.archive.store, uid, stop_before_pixels=True
        )
    except OSError as exc:
        raise HTTPException(404, f"instance {uid} is missing from storage") from exc
    except sr_report.NotAReport as exc:
        raise HTTPException(422, str(exc)) from exc
    if found is None:
        raise HTTPException(404, f"no instance {uid}")
    return found


def _audit(request: Request, p: Principal, item: sr_report.StoredInstance, what: str) -> None:
    context(request).audit.record(
        "read",
        user=p.username,
        client=p.client,
        study_uid=item.study_instance_uid,
        series_uid=item.series_instance_uid,
        sop_uid=item.sop_instance_uid,
        detail=what,
    )


@api_router.get(
    "/instances/{sop_uid}/report",
    tags=["archive"],
    summary="A Structured Report rendered as HTML",
    response_class=HTMLResponse,
)
async def instance_report(
    sop_uid: str, request: Request, p: Principal = Depends(require("view"))
) -> HTMLResponse:
    """Any SR (Basic/Enhanced/Comprehensive Text SR, KOS, measurement reports; PS3.3
    §C.17.3) as a readable HTML page: title, patient/study header, completion and
    verification status, observers and the content tree. 404 unknown instance, 422 when the
    instance is not an SR. No script runs in the page (CSP)."""

    def work() -> tuple[sr_report.StoredInstance, str]:
        item, ds = _load(request, sop_uid)
        try:
            return item, sr_report.render_report(ds)
        except sr_report.NotAReport as exc:
            raise HTTPException(422, f"instance {item.sop_instance_uid}: {exc}") from exc

    item, page = await run_in_threadpool(work)
    _audit(request, p, item, "SR report (HTML)")
    return HTMLResponse(
        page,
        headers={
            "Content-Security-Policy": sr_report.REPORT_CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
            "Referrer-Policy": "no-referrer",
        },
    )


@api_router.get(
    "/instances/{sop_uid}/document",
    tags=["archive"],
    summary="The Encapsulated Document of an instance (PDF, CDA, STL ...)",
    response_class=Response,
)
async def instance_document(
    sop_uid: str, request: Request, p: Principal = Depends(require("view"))
) -> Response:
    """The bytes of Encapsulated Document (0042,0011) with the MIME type of (0042,0012).
    PDF, text and images are ``inline`` (shown by the browser); other types are an
    ``attachment`` under ``Content-Security-Policy: sandbox``. 404 unknown instance, 422 when
    the instance holds no encapsulated document."""

    def work() -> tuple[sr_report.StoredInstance, sr_report.Document]:
        item, ds = _load(request, sop_uid)
        try:
            return item, sr_report.encapsulated_document(ds)
        except sr_report.NotAReport as exc:
            raise HTTPException(422, f"instance {item.sop_instance_uid}: {exc}") from exc

    item, doc = await run_in_threadpool(work)
    _audit(request, p, item, f"encapsulated document ({doc.mime})")
    ext = mimetypes.guess_extension(doc.mime.split(";")[0]) or ".bin"
    filename = f"{item.sop_instance_uid}{ext}"
    headers = {
        "Content-Disposition": f'{"inline" if doc.inline else "attachment"}; filename="{filename}"',
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store",
    }
    if not doc.inline:
        headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    elif doc.mime != "application/pdf":
        # Chromium's PDF viewer refuses to run in a sandboxed document; others get one
        headers["Content-Security-Policy"] = "sandbox; default-src 'none'; img-src 'self'"
    return Response(doc.data, media_type=doc.mime, headers=headers)
