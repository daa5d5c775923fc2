"""Study share links over HTTP (SPEC E7); the links themselves are archive/sharing.py.

Managing links (privilege ``share``, under ``/api``):

- ``POST /api/studies/{uid}/shares`` with one of ``{"valid_days": N}``, ``{"valid_months":
  N}``, ``{"until": "YYYY-MM-DD"}``, ``{"from_study_date_days": N}``, optionally ``"from":
  "issue"|"study_date"`` (origin of days/months; default: setting ``share_validity_from``) and
  ``"note"``; an empty body means ``share_default_days``. 201 ``{id, token, url, expires_at,
  study_instance_uid, created_by, ...}``: the only time the token is shown. 404 unknown study.
- ``GET /api/shares`` (an administrator sees every link, others their own; ``study_uid``,
  ``active`` filters) and ``DELETE /api/shares/{id}`` (revoke; others' links are a 404 to a
  non-administrator). Creation and revocation are audited (``admin``, object ``share:<id>``).

The public side (no login; the token is the credential):

- ``GET /share/{token}``: a self-contained HTML page (no external asset; a strict Content
  Security Policy with a per-response nonce; ``Referrer-Policy: no-referrer`` so the token
  never leaves in a Referer) showing the patient and study, the series with thumbnails and a
  simple image browser (click, wheel, arrow keys, slider), and the two downloads;
- ``GET /share/{token}/series/{se}/thumbnail`` and
  ``/share/{token}/series/{se}/instances/{sop}/rendered?frame=N[&window=c,w]``: JPEG
  renderings (pacsbox.archive.render, as WADO-RS rendered, PS3.18 §10.4.1.1.3) of the
  shared study's images only;
- ``GET /share/{token}/archive?compression=original|jpeg-lossless``: the study as a zip
  holding a DICOM File-set (PS3.10 §8, DICOMDIR + ``DICOM/PT../ST../SE../IM..``, as
  ``GET /api/studies/{uid}/archive``). ``original`` holds the stored files byte for byte;
  ``jpeg-lossless`` re-encodes every losslessly stored image as JPEG Lossless SV1
  (1.2.840.10008.1.2.4.70, same SOP Instance UID and pixel values) and keeps lossy-compressed
  images and non-image objects as stored; its DICOMDIR (written last) names the transfer
  syntax of each file as written.

An unknown, expired or revoked token — or one whose study is gone — gets the same 404 page
(one indexed look-up of the token's SHA-256 in every case). Every use is audited under the
user name ``share:<id>`` with the client address: the page (``read``) and each download
(``export``) always, image views once per link and client per ``IMAGE_AUDIT_WINDOW``;
refused tokens as ``read``/``denied`` once per client per window. The request log prints
these paths as ``/share/***`` (web/app.py), never the token.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select

from pacsbox.archive import render
from pacsbox.archive.dicomdir import FileSetInstance, plan_file_set
from pacsbox.archive.index.writer import INSTANCE, PATIENT, SERIES, STUDY
from pacsbox.archive.sharing import (
    JPEG_LOSSLESS_SV1,
    JpegLosslessEncoder,
    Share,
    ShareError,
    ShareLinks,
    ShareNotFound,
    Validity,
    wants_jpeg_lossless,
)
from pacsbox.archive.storage import InvalidUID, check_uid, encode_file_meta
from pacsbox.web.auth import Principal, client_address, context, require

api_router = APIRouter()
public_router = APIRouter()

#: image views and refused tokens are audited once per link (or client) per this many s
IMAGE_AUDIT_WINDOW = 600.0
NO_STORE = {"Cache-Control": "no-store"}


def links(request: Request) -> ShareLinks:
    state = request.app.state
    found = getattr(state, "share_links", None)
    if found is None:
        found = state.share_links = ShareLinks(context(request).archive.engine)
    return found


# == managing links ========================================================================
class ShareCreate(BaseModel):
    valid_days: int | None = Field(None, ge=1, le=3650)
    valid_months: int | None = Field(None, ge=1, le=120)
    until: date | None = None
    from_study_date_days: int | None = Field(None, ge=1, le=36500)
    origin: Literal["issue", "study_date"] | None = Field(None, alias="from")
    note: str = Field("", max_length=255)

    model_config = {"populate_by_name": True, "extra": "forbid"}

    @model_validator(mode="after")
    def _one(self) -> ShareCreate:
        given = [
            k
            for k in ("valid_days", "valid_months", "until", "from_study_date_days")
            if getattr(self, k) is not None
        ]
        if len(given) > 1:
            raise ValueError("give one of valid_days, valid_months, until, from_study_date_days")
        return self

    def validity(self) -> Validity:
        if self.from_study_date_days is not None:
            if self.origin == "issue":
                raise ShareError("from_study_date_days counts from the study date")
            return Validity(days=self.from_study_date_days, origin="study_date")
        return Validity(
            days=self.valid_days, months=self.valid_months, until=self.until, origin=self.origin
        )


def share_url(request: Request, token: str) -> str:
    return str(request.base_url).rstrip("/") + f"/share/{token}"


@api_router.post(
    "/studies/{study_uid}/shares",
    tags=["shares"],
    status_code=201,
    summary="Create a share link for a study",
)
def create_share(
    study_uid: str,
    request: Request,
    p: Principal = Depends(require("share")),
    body: ShareCreate | None = None,
) -> JSONResponse:
    """The answer holds the link (``url``, ``token``) once; only its hash is stored."""
    ctx = context(request)
    try:
        uid = check_uid(study_uid, "Study Instance UID")
    except InvalidUID as exc:
        raise HTTPException(400, str(exc)) from exc
    body = body or ShareCreate()
    try:
        share, token = links(request).create(
            uid,
            p.username,
            body.validity(),
            note=body.note,
            default_days=ctx.settings.share_default_days,
            default_origin=ctx.settings.share_validity_from,
        )
    except ShareNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except ShareError as exc:
        raise HTTPException(400, str(exc)) from exc
    ctx.audit.record(
        "admin",
        user=p.username,
        client=p.client,
        study_uid=uid,
        object=f"share:{share.id}",
        detail=f"share link created, valid until {share.expires_at.isoformat()} UTC "
        f"(from {share.validity_from})",
    )
    return JSONResponse(
        {**share.as_dict(), "token": token, "url": share_url(request, token)},
        status_code=201,
        headers=NO_STORE,
    )


@api_router.get("/shares", tags=["shares"], summary="Share links (admin: all; else own)")
def list_shares(
    request: Request,
    p: Annotated[Principal, Depends(require("share"))],
    study_uid: Annotated[str | None, Query(max_length=64)] = None,
    active: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    """Newest first, without tokens: study, creator, expiry, revoked, last access, count."""
    creator = None if p.user.has("admin") else p.username
    found = links(request).list(creator, study_uid, active, limit, offset)
    return [s.as_dict() for s in found]


@api_router.delete("/shares/{share_id}", tags=["shares"], summary="Revoke a share link")
def revoke_share(
    share_id: int, request: Request, p: Principal = Depends(require("share"))
) -> dict[str, Any]:
    ctx = context(request)
    creator = None if p.user.has("admin") else p.username
    try:
        share = links(request).revoke(share_id, p.username, creator)
    except ShareNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    ctx.audit.record(
        "admin",
        user=p.username,
        client=p.client,
        study_uid=share.study_instance_uid,
        object=f"share:{share_id}",
        detail="share link revoked",
    )
    return share.as_dict()


# == the public side =======================================================================
class _Once:
    """In-process de-duplication of audit events (bounded)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def first(self, *key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen = {k: t for k, t in self._seen.items() if t > now}
            if self._seen.get(key, 0.0) > now:
                return False
            self._seen[key] = now + IMAGE_AUDIT_WINDOW
            return True


def _once(request: Request) -> _Once:
    state = request.app.state
    found = getattr(state, "share_audit_once", None)
    if found is None:
        found = state.share_audit_once = _Once()
    return found


NOT_FOUND_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Link not available</title><style>{style}</style></head>
<body><main><h1>This link is not available</h1>
<p>The study link is unknown, has expired or was revoked. Ask the sender for a new link.</p>
</main></body></html>
"""


_NOT_FOUND_STYLE = (
    "body{background:#111;color:#ddd;font-family:system-ui,sans-serif;display:flex;"
    "align-items:center;justify-content:center;height:100vh;margin:0}"
    "main{max-width:28rem;padding:1rem}h1{font-size:1.3rem}"
)
#: one constant answer for every refused token (unknown, expired, revoked, study gone)
NOT_FOUND_BODY = NOT_FOUND_PAGE.format(style=_NOT_FOUND_STYLE)
_NOT_FOUND_STYLE_HASH = base64.b64encode(hashlib.sha256(_NOT_FOUND_STYLE.encode()).digest())


def _headers(nonce: str | None, style_hash: bytes | None = None) -> dict[str, str]:
    """Headers of the HTML pages: a CSP allowing only our inline script and style (by
    ``nonce``, or the style by its hash on the constant 404 page), no referrer."""
    if nonce:
        script, style = f"'nonce-{nonce}'", f"'nonce-{nonce}'"
    else:
        script, style = "'none'", f"'sha256-{(style_hash or b'').decode()}'"
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; img-src 'self'; script-src {script}; style-src {style}; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "X-Robots-Tag": "noindex, nofollow",
        **NO_STORE,
    }


def _not_found_page() -> HTMLResponse:
    return HTMLResponse(NOT_FOUND_BODY, 404, headers=_headers(None, _NOT_FOUND_STYLE_HASH))


class _Refused(Exception):
    """The token does not open a study (any reason): the same 404 for all."""


def _resolve(request: Request, token: str, *, count: bool = False) -> Share:
    share = links(request).resolve(token, count=count)
    if share is None:
        client = client_address(request)
        if _once(request).first("refused", client):
            context(request).audit.record(
                "read",
                user="share:?",
                client=client,
                outcome="denied",
                detail="share link refused: unknown, expired or revoked",
            )
        raise _Refused()
    request.state.user = f"share:{share.id}"
    return share


def _audit(request: Request, share: Share, action: str, detail: str) -> None:
    context(request).audit.record(
        action,
        user=f"share:{share.id}",
        client=client_address(request),
        study_uid=share.study_instance_uid,
        object=f"share:{share.id}",
        detail=detail,
    )


def _study_outline(ctx: Any, study_uid: str) -> dict[str, Any]:
    """Patient, study and per series the image instances (with their frame counts)."""
    with ctx.archive.engine.connect() as conn:
        head = conn.execute(
            select(
                PATIENT.c.patient_name,
                PATIENT.c.patient_id,
                PATIENT.c.patient_birth_date,
                PATIENT.c.patient_sex,
                STUDY.c.study_date,
                STUDY.c.study_time,
                STUDY.c.study_description,
                STUDY.c.accession_number,
                STUDY.c.modalities_in_study,
                STUDY.c.num_instances,
            )
            .join(PATIENT, PATIENT.c.id == STUDY.c.patient_fk)
            .where(STUDY.c.study_instance_uid == study_uid)
        ).first()
        rows = conn.execute(
            select(
                SERIES.c.series_instance_uid,
                SERIES.c.series_number,
                SERIES.c.modality,
                SERIES.c.series_description,
                INSTANCE.c.sop_instance_uid,
                INSTANCE.c.rows,
                INSTANCE.c.number_of_frames,
            )
            .join(SERIES, SERIES.c.id == INSTANCE.c.series_fk)
            .join(STUDY, STUDY.c.id == SERIES.c.study_fk)
            .where(STUDY.c.study_instance_uid == study_uid)
            .order_by(
                SERIES.c.series_number, SERIES.c.id, INSTANCE.c.instance_number, INSTANCE.c.id
            )
        ).all()
    series: dict[str, dict[str, Any]] = {}
    for r in rows:
        se = series.setdefault(
            r.series_instance_uid,
            {
                "uid": r.series_instance_uid,
                "number": r.series_number,
                "modality": r.modality or "",
                "description": r.series_description or "",
                "images": [],
                "other": 0,
            },
        )
        if r.rows:
            se["images"].append([r.sop_instance_uid, max(int(r.number_of_frames or 1), 1)])
        else:
            se["other"] += 1
    return {"study": dict(head._mapping) if head else {}, "series": list(series.values())}


def _da(value: str | None) -> str:
    text = (value or "").strip()
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


def _pn(value: str | None) -> str:
    groups = (value or "").split("=")
    return " ".join(p for p in groups[0].split("^") if p).strip() or "(no name)"


SHARE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Shared study — {title}</title>
<style nonce="{nonce}">
*{{box-sizing:border-box}}
body{{margin:0;background:#0d0f12;color:#d8dde3;font:15px/1.4 system-ui,sans-serif;
display:flex;flex-direction:column;height:100vh}}
header{{padding:.6rem 1rem;background:#171b21;display:flex;flex-wrap:wrap;gap:.4rem 1.5rem;
align-items:center;border-bottom:1px solid #2a3038}}
header h1{{font-size:1.1rem;margin:0;color:#fff}}
.meta{{color:#9aa4af;font-size:.9rem}}.meta b{{color:#d8dde3;font-weight:600}}
.dl{{margin-left:auto;display:flex;gap:.5rem;flex-wrap:wrap}}
a.btn{{background:#2563eb;color:#fff;text-decoration:none;padding:.45rem .8rem;
border-radius:4px;font-size:.9rem}}a.btn.alt{{background:#334155}}
a.btn:focus,a.btn:hover{{outline:2px solid #93c5fd}}
#wrap{{flex:1;display:flex;min-height:0}}
nav{{width:180px;overflow-y:auto;background:#12161b;border-right:1px solid #2a3038;
padding:.4rem}}
nav button{{display:block;width:100%;background:#1b2129;border:1px solid #2a3038;
color:#cfd6dd;margin:0 0 .4rem;padding:.3rem;border-radius:4px;cursor:pointer;
text-align:left;font-size:.8rem}}
nav button.on{{border-color:#3b82f6;background:#1e293b}}
nav img{{display:block;width:100%;height:120px;object-fit:contain;background:#000;
margin-bottom:.2rem}}
nav .none{{height:60px;display:flex;align-items:center;justify-content:center;
background:#000;color:#6b7785;margin-bottom:.2rem}}
main{{flex:1;display:flex;flex-direction:column;min-width:0}}
#stage{{flex:1;display:flex;align-items:center;justify-content:center;background:#000;
min-height:0}}
#view{{width:100%;height:100%;object-fit:contain}}#view:not([src]){{visibility:hidden}}
#bar{{display:flex;gap:.6rem;align-items:center;padding:.4rem .8rem;background:#171b21}}
#bar button{{background:#334155;color:#fff;border:0;border-radius:4px;padding:.3rem .7rem;
cursor:pointer}}
#pos{{flex:1}}#wl{{background:#1b2129;color:#d8dde3;border:1px solid #2a3038;
border-radius:4px;padding:.25rem}}#count{{min-width:6rem;text-align:right;color:#9aa4af}}
#note{{padding:1rem;color:#9aa4af}}
@media (max-width:700px){{#wrap{{flex-direction:column}}nav{{width:auto;display:flex;
overflow-x:auto;border-right:0}}nav button{{width:110px;flex:none;margin-right:.4rem}}
nav img{{height:80px}}}}
</style></head><body>
<header><h1>{patient}</h1>
<span class="meta">ID <b>{patient_id}</b></span>
<span class="meta">Born <b>{birth}</b></span>
<span class="meta">Study <b>{study_date}</b> {description}</span>
<span class="meta">Accession <b>{accession}</b></span>
<span class="meta">Link valid until <b>{expires} UTC</b></span>
<span class="dl"><a class="btn" id="dl-original" href="{base}/archive?compression=original"
 download>Download DICOM (original)</a>
<a class="btn alt" id="dl-jpeg" href="{base}/archive?compression=jpeg-lossless"
 download>Download DICOM (JPEG lossless)</a></span></header>
<div id="wrap"><nav id="series" aria-label="Series"></nav>
<main><div id="stage"><img id="view" alt="image"></div>
<div id="bar"><button id="prev" aria-label="previous image">&#9664;</button>
<input id="pos" type="range" min="0" max="0" value="0" aria-label="image">
<button id="next" aria-label="next image">&#9654;</button>
<select id="wl" aria-label="window" hidden><option value="">Window: as stored</option>
<option value="40,400">Soft tissue 40/400</option><option value="-600,1500">Lung -600/1500</option>
<option value="300,1500">Bone 300/1500</option><option value="40,80">Brain 40/80</option>
</select><span id="count"></span></div>
</main></div>
<script type="application/json" id="data" nonce="{nonce}">{data}</script>
<script nonce="{nonce}">
(function () {{
  const data = JSON.parse(document.getElementById('data').textContent);
  const base = data.base, nav = document.getElementById('series');
  const view = document.getElementById('view'), pos = document.getElementById('pos');
  const count = document.getElementById('count');
  const wl = document.getElementById('wl');
  let frames = [], current = null;
  function src(i) {{
    const f = frames[i];
    return base + '/series/' + current.uid + '/instances/' + f[0] + '/rendered?frame=' + f[1] +
      (wl.value ? '&window=' + wl.value : '');
  }}
  function show(i) {{
    if (!frames.length) return;
    i = Math.max(0, Math.min(frames.length - 1, i));
    pos.value = i;
    view.src = src(i);
    count.textContent = (i + 1) + ' / ' + frames.length;
    [1, 2, 3, -1].forEach(function (d) {{  // the next images are ready when scrolled to
      if (i + d >= 0 && i + d < frames.length) new Image().src = src(i + d);
    }});
  }}
  wl.addEventListener('change', function () {{ show(+pos.value); }});
  function open(se, button) {{
    current = se;
    wl.hidden = se.modality !== 'CT';
    if (wl.hidden) wl.value = '';
    frames = [];
    se.images.forEach(function (im) {{
      for (let n = 1; n <= im[1]; n++) frames.push([im[0], n]);
    }});
    document.querySelectorAll('nav button').forEach(function (b) {{
      b.classList.toggle('on', b === button);
    }});
    pos.max = Math.max(0, frames.length - 1);
    if (frames.length) {{ show(Math.floor((frames.length - 1) / 2)); }}
    else {{ view.removeAttribute('src'); count.textContent = 'no images: in the download'; }}
  }}
  let first = null;
  data.series.forEach(function (se) {{
    const b = document.createElement('button');
    b.type = 'button';
    if (se.images.length) {{
      const img = document.createElement('img');
      img.alt = '';
      img.loading = 'lazy';
      img.src = base + '/series/' + se.uid + '/thumbnail';
      b.appendChild(img);
      if (!first) first = [se, b];
    }} else {{
      const d = document.createElement('div');
      d.className = 'none';
      d.textContent = 'no image';
      b.appendChild(d);
    }}
    const label = document.createElement('div');
    let n = se.images.reduce(function (a, im) {{ return a + im[1]; }}, 0);
    label.textContent = (se.number != null ? '#' + se.number + ' ' : '') + se.modality +
      ' ' + se.description + ' (' + (n || se.other) + ')';
    b.appendChild(label);
    b.addEventListener('click', function () {{ open(se, b); }});
    nav.appendChild(b);
  }});
  if (first) open(first[0], first[1]);
  pos.addEventListener('input', function () {{ show(+pos.value); }});
  function step(d) {{ show(+pos.value + d); }}
  document.getElementById('prev').addEventListener('click', function () {{ step(-1); }});
  document.getElementById('next').addEventListener('click', function () {{ step(1); }});
  document.getElementById('stage').addEventListener('wheel', function (e) {{
    e.preventDefault(); step(e.deltaY > 0 ? 1 : -1);
  }}, {{passive: false}});
  document.addEventListener('keydown', function (e) {{
    const d = {{ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1}}[e.key];
    if (d && e.target !== pos) {{ step(d); e.preventDefault(); }}
  }});
}})();
</script></body></html>
"""


def _json_for_html(value: Any) -> str:
    """JSON safe inside a <script> element (no ``</script>``, no HTML comment openers)."""
    text = json.dumps(value, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@public_router.get(
    "/share/{token}", response_class=HTMLResponse, tags=["shares"], summary="A shared study"
)
def share_page(token: str, request: Request) -> Response:
    """No login: the token is the credential (SPEC E7)."""
    try:
        share = _resolve(request, token, count=True)
    except _Refused:
        return _not_found_page()
    ctx = context(request)
    outline = _study_outline(ctx, share.study_instance_uid)
    _audit(request, share, "read", "share link opened")
    study = outline["study"]
    nonce = secrets.token_urlsafe(16)
    base = f"/share/{token}"
    e = html.escape
    page = SHARE_PAGE.format(
        nonce=nonce,
        title=e(_pn(study.get("patient_name"))),
        patient=e(_pn(study.get("patient_name"))),
        patient_id=e(study.get("patient_id") or ""),
        birth=e(_da(study.get("patient_birth_date"))),
        study_date=e(_da(study.get("study_date"))),
        description=e(study.get("study_description") or ""),
        accession=e(study.get("accession_number") or ""),
        expires=e(share.expires_at.strftime("%Y-%m-%d %H:%M")),
        base=e(base),
        data=_json_for_html({"base": base, "series": outline["series"]}),
    )
    return HTMLResponse(page, headers=_headers(nonce))


def _image_response(request: Request, image: render.StoredImage, params: Any) -> Response:
    if not image.is_image:
        raise HTTPException(404, "not found")
    try:
        out = render.render(image.path, image.transfer_syntax_uid, params)
    except render.FrameNotFound as exc:
        raise HTTPException(404, "no such frame") from exc
    except render.RenderError as exc:
        raise HTTPException(400, str(exc)) from exc
    except render.NotRenderable as exc:
        raise HTTPException(406, str(exc)) from exc
    except FileNotFoundError as exc:
        raise HTTPException(404, "not found") from exc
    return Response(
        out.data,
        media_type=out.media_type,
        headers={"Referrer-Policy": "no-referrer", "Cache-Control": "private, max-age=300"},
    )


def _image_share(request: Request, token: str) -> Share:
    try:
        share = _resolve(request, token)
    except _Refused as exc:
        raise HTTPException(404, "not found") from exc
    if _once(request).first("images", str(share.id), client_address(request)):
        _audit(request, share, "read", "shared images viewed")
    return share


def _uid(value: str) -> str:
    try:
        return check_uid(value)
    except InvalidUID as exc:
        raise HTTPException(404, "not found") from exc


@public_router.get("/share/{token}/series/{series}/thumbnail", tags=["shares"])
def share_thumbnail(token: str, series: str, request: Request) -> Response:
    share = _image_share(request, token)
    ctx = context(request)
    _exists, image = render.representative_instance(
        ctx.archive.engine, ctx.archive.store, share.study_instance_uid, _uid(series)
    )
    if image is None:
        raise HTTPException(404, "not found")
    size = (render.THUMBNAIL_SIZE, render.THUMBNAIL_SIZE)
    params = render.RenderParams(frame=(image.frames + 1) // 2, size=size)
    return _image_response(request, image, params)


@public_router.get("/share/{token}/series/{series}/instances/{sop}/rendered", tags=["shares"])
def share_rendered(
    token: str,
    series: str,
    sop: str,
    request: Request,
    frame: Annotated[int, Query(ge=1, le=100_000)] = 1,
    window: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """One frame as JPEG (PS3.18 §10.4.1.1.3 semantics; ``window=center,width``)."""
    share = _image_share(request, token)
    ctx = context(request)
    image = render.find_instance(
        ctx.archive.engine, ctx.archive.store, share.study_instance_uid, _uid(series), _uid(sop)
    )
    if image is None:
        raise HTTPException(404, "not found")
    try:
        win = render.parse_window(window) if window else None
        params = render.RenderParams(frame=frame, window=win)
    except render.RenderError as exc:
        raise HTTPException(400, str(exc)) from exc
    return _image_response(request, image, params)


def _jpeg_zip_stream(ctx: Any, members: list[FileSetInstance]) -> Iterator[bytes]:
    """A stored zip of the File-set with images re-encoded as JPEG Lossless SV1; the DICOMDIR
    is written last so that it names each file's transfer syntax as written."""
    from pacsbox.web.api import _Sink

    store = ctx.archive.store
    workdir = Path(ctx.settings.data_dir) / "tmp"
    workdir.mkdir(parents=True, exist_ok=True)
    plan = plan_file_set(members)
    #: every member in plan order (so the positional file IDs stay those written), with the
    #: transfer syntax each file was written in
    written: list[FileSetInstance] = []
    sink = _Sink()
    with (
        JpegLosslessEncoder() as encoder,
        zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as zf,  # type: ignore[arg-type]
    ):
        for inst, file_id in plan.files:
            written.append(inst)
            try:
                path = store.locate(inst.key, inst.linked)
            except (OSError, ValueError):
                continue  # gone meanwhile: `pacsbox check` reports it (as the REST zip)
            prefix = b""
            if inst.storage_format != "part10":
                prefix = encode_file_meta(
                    inst.sop_class_uid, inst.sop_instance_uid, inst.transfer_syntax_uid
                )
            data = None
            if wants_jpeg_lossless(inst.transfer_syntax_uid, inst.rows):
                data = encoder.encode(str(path), prefix, str(workdir))
            name = "/".join(file_id)
            if data is not None:
                zf.writestr(name, data)
                written[-1] = replace(inst, transfer_syntax_uid=JPEG_LOSSLESS_SV1)
            else:
                try:
                    fh = open(path, "rb")  # noqa: SIM115
                except OSError:
                    continue
                with fh, zf.open(name, "w", force_zip64=True) as entry:
                    entry.write(prefix)
                    while chunk := fh.read(1 << 20):
                        entry.write(chunk)
                        yield sink.take()
            yield sink.take()
        zf.writestr("DICOMDIR", plan_file_set(written).dicomdir)
    yield sink.take()


@public_router.get("/share/{token}/archive", tags=["shares"])
def share_archive(
    token: str,
    request: Request,
    compression: Literal["original", "jpeg-lossless"] = "original",
) -> Response:
    """The shared study as a zip File-set, as stored or JPEG Lossless compressed."""
    from pacsbox.web.api import _zip_stream, file_set_members

    try:
        share = _resolve(request, token, count=True)
    except _Refused:
        return _not_found_page()
    ctx = context(request)
    members = file_set_members(
        ctx.archive.engine, STUDY.c.study_instance_uid, share.study_instance_uid
    )
    if not members:
        return _not_found_page()
    _audit(
        request,
        share,
        "export",
        f"share link zip download ({compression}, {len(members)} instance(s))",
    )
    filename = f"study-{share.study_instance_uid}-{compression}.zip"
    headers = {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Referrer-Policy": "no-referrer",
        **NO_STORE,
    }
    if compression == "original":
        plan = plan_file_set(members)
        files = [(inst, "/".join(file_id)) for inst, file_id in plan.files]
        body = _zip_stream(ctx.archive.store, plan.dicomdir, files)
    else:
        body = _jpeg_zip_stream(ctx, members)
    return StreamingResponse(body, media_type="application/zip", headers=headers)
