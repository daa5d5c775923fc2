"""WADO-URI (PS3.18 §9, formerly "Web Access to DICOM Persistent Objects"; SPEC E2, E3) at
``GET /wado``.

Parameters (§9.1.1 required, §9.1.2 optional; names are case-sensitive):

- ``requestType=WADO``, ``studyUID``, ``seriesUID``, ``objectUID`` — all required; the object
  must belong to that series and study (else 404).
- ``contentType`` — a comma-separated list; the first we can produce wins:
  ``application/dicom``, ``image/jpeg`` (the default for images), ``image/png``,
  ``image/gif``; ``*/*`` / ``image/*`` accepted. Non-image objects (SR, PDF, ...) default to
  ``application/dicom``; asking for an image type of them is a 406.
- Image parameters (§9.1.2.3–.11): ``frameNumber`` (1-based; out of range → 400), ``rows``,
  ``columns`` (fit keeping the aspect ratio, capped at 4096), ``region=xmin,ymin,xmax,ymax``
  (fractions 0..1), ``windowCenter`` + ``windowWidth`` (both or neither), ``imageQuality``
  (1..100, JPEG). Ignored for application/dicom.
- ``application/dicom`` parameters: ``transferSyntax`` — absent: Explicit VR Little Endian
  (§9.1.2.5.2; the stored bytes when stored so, else decompressed); a UID: as stored when it is
  the stored syntax, else transcoded with :mod:`pacsbox.archive.transcode` (lossless only; 406
  when impossible); ``*``: as stored, whatever it is (extension). ``anonymize=yes``: Basic
  Profile de-identification (:mod:`pacsbox.archive.deidentify`); with an image type → 400.
- ``charset``, ``annotation`` (no annotation is burned in), ``aetitle`` are accepted and
  ignored; ``presentationUID`` / ``presentationSeriesUID`` (presentation states) → 400, not
  supported.

Authentication, in this order: ``Authorization`` (Bearer token, Basic), the login session,
then — only when the setting ``wado_url_credentials`` is on — ``username`` and ``password``
URL parameters (throttled like every password check; the request log masks ``password``).
When the setting ``wado_user`` names an account, URL credentials are accepted for that account
only, and that account is refused everywhere except ``/wado`` (pacsbox.web.auth.require). The
caller needs the ``view`` privilege.

Errors: 400 bad or missing parameter, 401/403 authentication/authorisation, 404 unknown
object, 406 content type (or transfer syntax) not possible for this object.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from pacsbox.archive import render
from pacsbox.web.auth import Principal, authenticate, client_address, context, unauthorized
from pacsbox.web.rendered import NO_STORE, audit_read, uid_param

router = APIRouter()

DICOM = "application/dicom"
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif")
EXPLICIT_LE = "1.2.840.10008.1.2.1"
_CHUNK = 1 << 20


async def wado_principal(request: Request) -> Principal:
    """Who calls /wado (module docstring): header/session first, then URL credentials."""
    ctx = context(request)
    q = request.query_params
    settings = ctx.settings
    url_creds = "username" in q or "password" in q
    has_header = bool(request.headers.get("authorization"))
    if url_creds and not has_header:
        if not settings.wado_url_credentials:
            raise unauthorized(
                "user name/password URL parameters are disabled (setting "
                "wado_url_credentials); use HTTP Basic"
            )
        username, password = q.get("username", ""), q.get("password", "")
        if not username:
            raise unauthorized("username is missing")
        if settings.wado_user and username != settings.wado_user:
            raise unauthorized("only the WADO account may send credentials in the URL")
        from pacsbox.web.auth import _basic

        value = base64.b64encode(f"{username}:{password}".encode()).decode()
        client = client_address(request)
        user = await run_in_threadpool(_basic, ctx, value, client)
        principal = Principal(user, "url", client)
        request.state.user = user.username
    else:
        principal = await authenticate(request)
    if principal.user.must_change_password:
        raise HTTPException(403, "the password must be changed first: POST /api/me/password")
    if not principal.user.has("view"):
        raise HTTPException(403, "the 'view' privilege is required")
    return principal


@dataclass
class WadoRequest:
    study: str
    series: str
    sop: str
    content_types: list[str]
    anonymize: bool
    transfer_syntax: str | None


def _single(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise HTTPException(400, f"parameter {name} is given more than once")
    return values[0] if values else None


def _required(request: Request, name: str) -> str:
    value = _single(request, name)
    if value is None or not value.strip():
        raise HTTPException(400, f"parameter {name} is required")
    return value.strip()


def _parse(request: Request) -> WadoRequest:
    if _required(request, "requestType") != "WADO":
        raise HTTPException(400, "requestType must be WADO")
    study = uid_param(_required(request, "studyUID"), "studyUID")
    series = uid_param(_required(request, "seriesUID"), "seriesUID")
    sop = uid_param(_required(request, "objectUID"), "objectUID")
    for name in ("presentationUID", "presentationSeriesUID"):
        if _single(request, name):
            raise HTTPException(400, f"{name}: presentation states are not supported")
    ctype = _single(request, "contentType")
    types = [t.split(";")[0].strip().lower() for t in (ctype or "").split(",") if t.strip()]
    anonymize = _single(request, "anonymize")
    if anonymize is not None and anonymize.strip().lower() not in ("yes", ""):
        raise HTTPException(400, "anonymize must be yes")
    ts = _single(request, "transferSyntax")
    ts = ts.strip() if ts else None
    if ts and ts != "*":
        ts = uid_param(ts, "transferSyntax")
    return WadoRequest(
        study, series, sop, types, anonymize is not None and anonymize.strip() != "", ts
    )


def _choose(types: list[str], is_image: bool) -> str | None:
    """The content type to answer (§9.1.2.1), None when none is possible."""
    if not types:
        return "image/jpeg" if is_image else DICOM
    for t in types:
        if t == DICOM:
            return DICOM
        if t in ("*/*", "image/*") and not is_image:
            if t == "*/*":
                return DICOM
            continue
        if t in ("*/*", "image/*"):
            return "image/jpeg"
        if t in IMAGE_TYPES and is_image:
            return t
    return None


def _image_params(request: Request, media: str) -> render.RenderParams:
    try:
        frame_text = _single(request, "frameNumber")
        frame = render.parse_positive_int(frame_text, "frameNumber", None) if frame_text else 1
        rows_text, cols_text = _single(request, "rows"), _single(request, "columns")
        rows = render.parse_positive_int(rows_text, "rows") if rows_text else None
        cols = render.parse_positive_int(cols_text, "columns") if cols_text else None
        region_text = _single(request, "region")
        fraction = render.parse_region(region_text) if region_text else None
        wc, ww = _single(request, "windowCenter"), _single(request, "windowWidth")
        window = None
        if (wc is None) != (ww is None):
            raise render.RenderError("windowCenter and windowWidth must be given together")
        if wc is not None and ww is not None:
            window = render.Window(
                render.parse_number(wc, "windowCenter"), render.parse_number(ww, "windowWidth")
            )
        quality_text = _single(request, "imageQuality")
        quality = render.parse_quality(quality_text) if quality_text else render.DEFAULT_QUALITY
        return render.RenderParams(
            frame=frame,
            window=window,
            size=(cols, rows) if rows or cols else None,
            fraction=fraction,
            media_type=media,
            quality=quality,
        )
    except render.RenderError as exc:
        raise HTTPException(400, str(exc)) from exc


@router.get("/wado", tags=["wado"], summary="WADO-URI (PS3.18 §9)")
def wado(request: Request, p: Principal = Depends(wado_principal)) -> Response:
    """Retrieve one DICOM object as JPEG/PNG/GIF or as a DICOM file; see the module doc."""
    ctx = context(request)
    req = _parse(request)
    image = render.find_instance(
        ctx.archive.engine, ctx.archive.store, req.study, req.series, req.sop
    )
    if image is None:
        raise HTTPException(404, f"no object {req.sop} in series {req.series} of study {req.study}")
    media = _choose(req.content_types, image.is_image)
    if media is None:
        raise HTTPException(
            406,
            "this object can be returned as application/dicom"
            + (" or image/jpeg, image/png, image/gif" if image.is_image else " only"),
        )
    if media != DICOM:
        if req.anonymize:
            raise HTTPException(400, "anonymize applies to application/dicom only")
        params = _image_params(request, media)
        try:
            out = render.render(image.path, image.transfer_syntax_uid, params)
        except render.RenderError as exc:  # FrameNotFound included: a bad frameNumber
            raise HTTPException(400, str(exc)) from exc
        except render.NotRenderable as exc:
            raise HTTPException(406, str(exc)) from exc
        except FileNotFoundError as exc:
            raise HTTPException(404, "the object was deleted") from exc
        audit_read(request, p, "wado-uri image", image)
        return Response(out.data, media_type=out.media_type, headers=NO_STORE)
    response = _dicom_response(ctx, image, req)
    audit_read(
        request, p, "wado-uri dicom" + (" anonymized" if req.anonymize else ""), image, once=False
    )
    return response


def _dicom_response(ctx: Any, image: render.StoredImage, req: WadoRequest) -> Response:
    from pacsbox.archive.transcode import TranscodeError, plan_transfer

    stored = image.transfer_syntax_uid
    target = stored if req.transfer_syntax == "*" else (req.transfer_syntax or EXPLICIT_LE)
    plan = plan_transfer(stored, [target])
    if not plan.possible:
        raise HTTPException(
            406, f"the object (stored as {stored}) cannot be converted to {target} losslessly"
        )
    headers = {
        **NO_STORE,
        "Content-Disposition": f'attachment; filename="{image.sop_instance_uid}.dcm"',
    }
    if not image.path.is_file():
        raise HTTPException(404, "the object was deleted")
    try:
        if req.anonymize:
            data = _anonymized(ctx, image, target, plan.as_stored)
            return Response(data, media_type=DICOM, headers=headers)
        if plan.as_stored and image.storage_format == "part10":
            return FileResponse(image.path, media_type=DICOM, headers=headers)
        if plan.as_stored:  # a bare data set: add the file meta (PS3.10 §7.1)
            return StreamingResponse(_with_meta(image, stored), media_type=DICOM, headers=headers)
        from pacsbox.archive.storage import encode_file_meta
        from pacsbox.archive.transcode import transcode

        ts, body = transcode(image.path, stored, plan.targets)
        meta = encode_file_meta(image.sop_class_uid, image.sop_instance_uid, ts)
        return Response(meta + body, media_type=DICOM, headers=headers)
    except TranscodeError as exc:
        raise HTTPException(406, str(exc)) from exc


def _with_meta(image: render.StoredImage, ts: str) -> Iterator[bytes]:
    from pacsbox.archive.storage import encode_file_meta

    yield encode_file_meta(image.sop_class_uid, image.sop_instance_uid, ts)
    with open(image.path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


def _anonymized(ctx: Any, image: render.StoredImage, target: str, as_stored: bool) -> bytes:
    """The de-identified object as a Part-10 file in ``target`` (PS3.15 Annex E)."""
    from pydicom import dcmwrite
    from pydicom.uid import UID

    from pacsbox.archive.deidentify import CannotDeidentify, archive_secret, deidentify
    from pacsbox.archive.transcode import (
        UNCOMPRESSED_TARGETS,
        TranscodeError,
        _to_native,
        read_instance,
    )

    try:
        ds = read_instance(image.path, image.transfer_syntax_uid)
    except Exception as exc:
        raise TranscodeError(f"cannot read the object: {exc}") from exc
    try:
        deidentify(ds, archive_secret(ctx.settings.data_dir))
    except CannotDeidentify as exc:
        raise HTTPException(406, f"cannot de-identify: {exc}") from exc
    try:
        if not as_stored:
            _to_native(ds, image.transfer_syntax_uid)
            if target not in UNCOMPRESSED_TARGETS:
                ds.compress(UID(target), generate_instance_uid=False)
        ds.file_meta.TransferSyntaxUID = UID(target)
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buf = io.BytesIO()
        dcmwrite(buf, ds, enforce_file_format=True)
    except HTTPException:
        raise
    except Exception as exc:
        raise TranscodeError(f"cannot write {UID(target).name}: {exc}") from exc
    return buf.getvalue()
