"""WADO-RS rendered and thumbnail resources (PS3.18 §10.4.1.1.3 Rendered Resources,
§10.4.1.1.4 Thumbnail Resources, §8.3.5 rendered media types and query parameters).

Under ``/dicom-web``, privilege ``view``:

- ``/studies/{s}/series/{se}/instances/{i}/rendered`` — frame 1 of the instance;
- ``/studies/{s}/series/{se}/instances/{i}/frames/{n}/rendered`` — one frame (1-based; a
  list of several frames is a 400, a frame that does not exist a 404);
- ``/studies/{s}/thumbnail``, ``/studies/{s}/series/{se}/thumbnail``,
  ``.../instances/{i}/thumbnail``, ``.../frames/{n}/thumbnail`` — a small rendering of the
  representative image: the middle instance (by Instance Number) of the series, of the
  study's first series with images; the middle frame of a multi-frame instance.

Query parameters (§8.3.5.1): ``window=center,width[,linear|linear-exact|sigmoid]``,
``viewport=vw,vh[,sx,sy,sw,sh]``, ``quality=1..100``, ``accept=<media type>`` (overrides the
Accept header, §8.3.3.1); ``annotation`` and ``charset`` are accepted and ignored. Media types
(§8.3.5.1.1 / Table 8.7.4-1): image/jpeg (default), image/png, image/gif.

``/studies/{s}/rendered`` and ``/studies/{s}/series/{se}/rendered`` answer
``multipart/related; type="image/jpeg"`` (or png/gif) with one part per image instance (its
first frame) in Series Number / Instance Number order, rendered one at a time while streaming;
instances without pixel data are left out.

Status codes: 400 bad parameter or UID, 404 unknown study/series/instance or frame, 406 no
acceptable media type or the object has no renderable pixel data (SR, PDF, undecodable codec).
The work is :mod:`pacsbox.archive.render`; nothing is cached (``Cache-Control: no-store``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from pacsbox.archive import render, video
from pacsbox.archive.storage import InvalidUID, check_uid
from pacsbox.web.auth import Principal, context, require

router = APIRouter()

THUMBNAIL_VIEWPORT = (render.THUMBNAIL_SIZE, render.THUMBNAIL_SIZE)
#: Media types in our order of preference when the client accepts several equally.
RENDERED_TYPES = ("image/jpeg", "image/png", "image/gif")
NO_STORE = {"Cache-Control": "no-store"}


def uid_param(value: str, what: str) -> str:
    """A UID path/query parameter (PS3.5 §9.1), else 400."""
    try:
        return check_uid(value, what)
    except InvalidUID as exc:
        raise HTTPException(400, str(exc)) from exc


def negotiate(accept: str | None, allowed: tuple[str, ...] = RENDERED_TYPES) -> str | None:
    """The media type to answer from an Accept header / ``accept`` parameter (RFC 9110
    §12.5.1: q-values, ``image/*``, ``*/*``; parameters other than q are ignored). None when
    nothing acceptable is offered; an absent or empty value means the first of ``allowed``."""
    if accept is None or not accept.strip():
        return allowed[0]
    best: tuple[float, int, str] | None = None
    for position, item in enumerate(accept.split(",")[:64]):
        fields = [f.strip() for f in item.split(";")]
        media = fields[0].lower()
        q = 1.0
        for f in fields[1:]:
            name, _, value = f.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        if media in ("*/*", "image/*"):
            candidates = list(allowed)
        elif media in allowed:
            candidates = [media]
        else:
            continue
        for c in candidates:
            rank = (-q, position * 10 + allowed.index(c), c)
            if best is None or rank < best:
                best = rank
            break  # the wildcard stands for our first preference
    return best[2] if best else None


def audit_read(
    request: Request, p: Principal, what: str, image: render.StoredImage, once: bool = True
) -> None:
    """A ``read`` audit event for ``image``'s study; with ``once`` through the DICOMweb
    de-duplication (one event per user, client, study and kind per window, app state
    ``dicomweb_audit``), else always."""
    extra = {"series_uid": image.series_instance_uid, "sop_uid": image.sop_instance_uid}
    dedup = getattr(request.app.state, "dicomweb_audit", None) if once else None
    if dedup is not None:
        dedup.record(request, p, what, image.study_instance_uid, **extra)
        return
    context(request).audit.record(
        "read",
        user=p.username,
        client=p.client,
        study_uid=image.study_instance_uid,
        detail=what,
        **extra,
    )


def _params(request: Request, thumbnail: bool) -> tuple[render.RenderParams, str]:
    """Rendering parameters and media type from the query (PS3.18 §8.3.5.1)."""
    q = request.query_params
    media = negotiate(q.get("accept") or request.headers.get("accept"))
    if media is None:
        raise HTTPException(406, "acceptable media types here: " + ", ".join(RENDERED_TYPES))
    try:
        window = render.parse_window(q["window"]) if q.get("window") else None
        viewport: tuple[int, int] | None = THUMBNAIL_VIEWPORT if thumbnail else None
        region = None
        if q.get("viewport"):
            viewport, region = render.parse_viewport(q["viewport"])
        quality = render.parse_quality(q["quality"]) if q.get("quality") else None
        params = render.RenderParams(
            window=window,
            size=viewport,
            region=region,
            media_type=media,
            quality=quality or render.DEFAULT_QUALITY,
        )
    except render.RenderError as exc:
        raise HTTPException(400, str(exc)) from exc
    return params, media


def wants_video(accept: str | None) -> bool:
    """True when an Accept value (or ``accept`` parameter) takes video/mp4: absent, or
    ``video/mp4``, ``video/*`` or ``*/*`` with q > 0 (a browser's ``<video>`` element sends
    ``*/*``)."""
    if accept is None or not accept.strip():
        return True
    for item in accept.split(",")[:64]:
        fields = [f.strip() for f in item.split(";")]
        q = 1.0
        for f in fields[1:]:
            name, _, value = f.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0 and fields[0].lower() in ("video/mp4", "video/*", "*/*"):
            return True
    return False


def _video(request: Request, p: Principal, image: render.StoredImage) -> Response:
    """The video instance as MP4 (archive/video.py), cached; byte ranges served (RFC 9110
    §14) so the browser can seek."""
    ctx = context(request)
    root = Path(ctx.archive.store.root)
    try:
        key = image.path.relative_to(root).as_posix()
    except ValueError:
        key = str(image.path)  # imported in place
    try:
        mp4 = video.cached_mp4(
            image.path,
            key,
            image.transfer_syntax_uid,
            video.cache_root_for(root),
            Path(ctx.settings.data_dir) / "tmp",
        )
    except video.VideoRenderError as exc:
        raise HTTPException(406, str(exc)) from exc
    except FileNotFoundError as exc:
        raise HTTPException(404, "the instance was deleted") from exc
    audit_read(request, p, "rendered video", image)
    return FileResponse(mp4, media_type="video/mp4", headers={"Cache-Control": "private"})


def _thumbnail_frame(image: render.StoredImage) -> int:
    """The middle frame; the first of a video (decoding half a video for a thumbnail is
    not worth it)."""
    if image.transfer_syntax_uid in video.VIDEO_SYNTAXES:
        return 1
    return (image.frames + 1) // 2


def _frame_number(frames: str) -> int:
    parts = [f.strip() for f in frames.split(",")]
    if len(parts) != 1:
        raise HTTPException(400, "a rendered frame resource takes exactly one frame number")
    text = parts[0]
    if not text.isdigit() or len(text) > 9 or int(text) < 1:
        raise HTTPException(400, f"frame number {text[:20]!r} is not a positive integer")
    return int(text)


def _instance(request: Request, study: str, series: str, sop: str) -> render.StoredImage:
    ctx = context(request)
    found = render.find_instance(
        ctx.archive.engine,
        ctx.archive.store,
        uid_param(study, "Study Instance UID"),
        uid_param(series, "Series Instance UID"),
        uid_param(sop, "SOP Instance UID"),
    )
    if found is None:
        raise HTTPException(404, f"no instance {sop} in series {series} of study {study}")
    return found


def _render(image: render.StoredImage, params: render.RenderParams, frame_resource: bool) -> Any:
    """Render or raise the HTTP error of §10.4.1.1.3."""
    if not image.is_image:
        raise HTTPException(406, "the object has no image to render")
    try:
        out = render.render(image.path, image.transfer_syntax_uid, params)
    except render.FrameNotFound as exc:
        raise HTTPException(404 if frame_resource else 400, str(exc)) from exc
    except render.RenderError as exc:
        raise HTTPException(400, str(exc)) from exc
    except render.NotRenderable as exc:
        raise HTTPException(406, str(exc)) from exc
    except FileNotFoundError as exc:
        raise HTTPException(404, "the instance was deleted") from exc
    return Response(out.data, media_type=out.media_type, headers=NO_STORE)


def _with_frame(params: render.RenderParams, frame: int) -> render.RenderParams:
    from dataclasses import replace

    return replace(params, frame=frame)


def _respond(
    request: Request,
    p: Principal,
    image: render.StoredImage,
    frame: int,
    thumbnail: bool,
    frame_resource: bool,
) -> Response:
    params, _media = _params(request, thumbnail)
    response = _render(image, _with_frame(params, frame), frame_resource)
    audit_read(request, p, "thumbnail" if thumbnail else "rendered", image)
    return response


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/rendered",
    tags=["dicomweb"],
    summary="WADO-RS rendered instance (first frame)",
)
def instance_rendered(
    study: str,
    series: str,
    sop: str,
    request: Request,
    p: Principal = Depends(require("view")),
) -> Response:
    """Frame 1 as an image; a video instance (MPEG-2, H.264, HEVC transfer syntaxes) as
    video/mp4 when the client takes it (PS3.18 Table 8.7.4-1)."""
    image = _instance(request, study, series, sop)
    if image.transfer_syntax_uid in video.VIDEO_SYNTAXES and wants_video(
        request.query_params.get("accept") or request.headers.get("accept")
    ):
        return _video(request, p, image)
    return _respond(request, p, image, 1, False, False)


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}/rendered",
    tags=["dicomweb"],
    summary="WADO-RS rendered frame",
)
def frame_rendered(
    study: str,
    series: str,
    sop: str,
    frames: str,
    request: Request,
    p: Principal = Depends(require("view")),
) -> Response:
    number = _frame_number(frames)
    return _respond(request, p, _instance(request, study, series, sop), number, False, True)


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/thumbnail",
    tags=["dicomweb"],
    summary="WADO-RS instance thumbnail (middle frame)",
)
def instance_thumbnail(
    study: str,
    series: str,
    sop: str,
    request: Request,
    p: Principal = Depends(require("view")),
) -> Response:
    image = _instance(request, study, series, sop)
    return _respond(request, p, image, _thumbnail_frame(image), True, False)


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}/thumbnail",
    tags=["dicomweb"],
    summary="WADO-RS frame thumbnail",
)
def frame_thumbnail(
    study: str,
    series: str,
    sop: str,
    frames: str,
    request: Request,
    p: Principal = Depends(require("view")),
) -> Response:
    number = _frame_number(frames)
    return _respond(request, p, _instance(request, study, series, sop), number, True, True)


def _representative(request: Request, study: str, series: str | None) -> render.StoredImage:
    ctx = context(request)
    study_uid = uid_param(study, "Study Instance UID")
    series_uid = uid_param(series, "Series Instance UID") if series is not None else None
    exists, image = render.representative_instance(
        ctx.archive.engine, ctx.archive.store, study_uid, series_uid
    )
    what = f"series {series}" if series is not None else f"study {study}"
    if not exists:
        raise HTTPException(404, f"no {what}")
    if image is None:
        raise HTTPException(406, f"the {what} holds no image to make a thumbnail from")
    return image


@router.get(
    "/studies/{study}/series/{series}/thumbnail",
    tags=["dicomweb"],
    summary="WADO-RS series thumbnail (middle image)",
)
def series_thumbnail(
    study: str,
    series: str,
    request: Request,
    p: Principal = Depends(require("view")),
) -> Response:
    image = _representative(request, study, series)
    return _respond(request, p, image, _thumbnail_frame(image), True, False)


@router.get(
    "/studies/{study}/thumbnail",
    tags=["dicomweb"],
    summary="WADO-RS study thumbnail (middle image of the first series)",
)
def study_thumbnail(
    study: str,
    request: Request,
    p: Principal = Depends(require("view")),
) -> Response:
    image = _representative(request, study, None)
    return _respond(request, p, image, _thumbnail_frame(image), True, False)


def _multipart(request: Request, p: Principal, study: str, series: str | None) -> Response:
    """Every image of a study/series rendered, as one multipart/related answer (streamed)."""
    import uuid

    params, media = _params(request, False)
    ctx = context(request)
    study_uid = uid_param(study, "Study Instance UID")
    series_uid = uid_param(series, "Series Instance UID") if series is not None else None
    exists, images = render.list_images(
        ctx.archive.engine, ctx.archive.store, study_uid, series_uid
    )
    what = f"series {series}" if series is not None else f"study {study}"
    if not exists:
        raise HTTPException(404, f"no {what}")
    if not images:
        raise HTTPException(406, f"the {what} holds no image to render")
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: {media}\r\n\r\n".encode()

    def parts() -> Iterator[bytes]:
        for image in images:
            try:
                out = render.render(image.path, image.transfer_syntax_uid, params)
            except (render.RenderError, render.NotRenderable, OSError):
                continue  # deleted meanwhile, undecodable, region outside this image
            yield head + out.data + b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    audit_read(request, p, "rendered", images[0])
    return StreamingResponse(
        parts(),
        media_type=f'multipart/related; type="{media}"; boundary={boundary}',
        headers=NO_STORE,
    )


@router.get(
    "/studies/{study}/series/{series}/rendered",
    tags=["dicomweb"],
    summary="WADO-RS rendered series (multipart, one image per instance)",
)
def series_rendered(
    study: str,
    series: str,
    request: Request,
    p: Principal = Depends(require("view")),
) -> Response:
    return _multipart(request, p, study, series)


@router.get(
    "/studies/{study}/rendered",
    tags=["dicomweb"],
    summary="WADO-RS rendered study (multipart, one image per instance)",
)
def study_rendered(
    study: str,
    request: Request,
    p: Principal = Depends(require("view")),
) -> Response:
    return _multipart(request, p, study, None)
