"""DICOMweb under ``/dicom-web`` (PS3.18; SPEC E1): QIDO-RS, WADO-RS and STOW-RS.

- **QIDO-RS** (PS3.18 §10.6): ``/studies``, ``/series``, ``/instances``,
  ``/studies/{study}/series``, ``/studies/{study}/instances``,
  ``/studies/{study}/series/{series}/instances``. Every match goes through the one query
  engine (:mod:`pacsbox.archive.query`, PS3.4 §C.2.2.2 matching): keys by keyword, by tag
  (``00100010``) or as ``Sequence.Attribute``; ``includefield`` (keywords, tags, ``all``);
  ``limit`` / ``offset``; ``fuzzymatching=true`` makes person names match any name component
  that starts with the value, case-insensitively. Answers ``application/dicom+json``
  (PS3.18 §F.2), ``200 []`` when nothing matches (see docs/conformance.md), and
  ``X-Total-Count`` (one COUNT query) when ``limit`` or ``offset`` is given. Keys the engine
  cannot match are ignored with a ``Warning: 299`` header (PS3.18 §8.3.4.1).
- **WADO-RS** (PS3.18 §10.4): study / series / instance as ``multipart/related;
  type="application/dicom"`` streamed from storage file by file (as stored, or transcoded by
  :mod:`pacsbox.archive.transcode` when the Accept header names another transfer syntax;
  default Explicit VR Little Endian, PS3.18 §8.7.3.5.2); ``/metadata`` from the stored DICOM
  JSON with ``BulkDataURI`` for bulk values and Pixel Data; ``/frames/{list}``
  (:mod:`pacsbox.web.frames`); ``/bulkdata/{tag path}``.
- **STOW-RS** (PS3.18 §10.5): ``POST /studies[/{study}]`` with ``multipart/related;
  type="application/dicom"``; parts are streamed to temporary files and stored one by one
  through the one ingest path (:meth:`pacsbox.archive.ingest.Ingest.store_file`); the answer
  lists ReferencedSOPSequence / FailedSOPSequence (FailureReason = the PS3.4 C-STORE status).

Privileges: ``view`` to search and retrieve, ``upload`` to store. Reads are audited once per
user, study and kind of request within :data:`AUDIT_WINDOW` seconds (a viewer fetching
hundreds of frames makes one audit event, not hundreds).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import and_, func, select
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from pacsbox.archive.audit import StoreBatch
from pacsbox.archive.header import read_part10
from pacsbox.archive.index.writer import INSTANCE, SERIES, STUDY
from pacsbox.archive.ingest import IngestRefused
from pacsbox.archive.query import (
    _JSON_LEVEL,
    CATALOGUE,
    KeyMatch,
    Level,
    MatchType,
    Model,
    Query,
    QueryEngine,
    QueryError,
    attribute_level,
    match_for,
)
from pacsbox.archive.retrieve import RetrieveItem, RetrieveRequest, RetrieveSelection
from pacsbox.archive.storage import InvalidUID, check_uid, encode_file_meta
from pacsbox.archive.transcode import (
    EXPLICIT_LE,
    IMPLICIT_LE,
    LOSSLESS_TARGETS,
    NATIVE_SYNTAXES,
    TranscodeError,
    can_decode,
    can_encode,
    plan_transfer,
    transcode,
)
from pacsbox.web.auth import Principal, context, require
from pacsbox.web.frames import (
    IMAGE_MEDIA_TYPES,
    MEDIA_TYPE_OF_SYNTAX,
    FrameError,
    ImageFacts,
    decoded_frame,
    element_value,
    encoded_frame,
    stored_frames,
)

log = logging.getLogger("pacsbox.dicomweb")
router = APIRouter(prefix="/dicom-web", tags=["dicomweb"])

DICOM_JSON = "application/dicom+json"
STOW_SOURCE_AE = "STOW-RS"
CHUNK = 1 << 20
#: Seconds during which the same (user, client, study, kind) read is audited only once.
AUDIT_WINDOW = 60.0
MAX_STOW_PARTS = 10_000
MAX_PART_HEADER = 8192
MAX_FRAMES_PER_REQUEST = 10_000
MAX_LIMIT = 100_000
#: Pages up to this size are read before answering (the total may then need no COUNT).
PAGE_BUFFER = 1000

# -- media types ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header (RFC 9110 §12.5.1) with the DICOM parameters."""

    media: str  #: e.g. multipart/related, application/dicom, */*
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def multipart(self) -> bool:
        return self.media == "multipart/related"

    @property
    def part_type(self) -> str:
        """The type of the parts (``type`` parameter of multipart, else the media itself)."""
        return self.params.get("type", "").lower() if self.multipart else self.media

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    out, buf, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    out.append("".join(buf))
    return out


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/sub; a=b; c="d"`` → (``type/sub`` lower-cased, {a: b, c: d})."""
    pieces = _split_outside_quotes(value, ";")
    media = pieces[0].strip().lower()
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, sep, val = piece.partition("=")
        if not sep:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1]
        params[name.strip().lower()] = val
    return media, params


def parse_accept(header: str | None) -> list[MediaRange]:
    """The Accept header as media ranges, best first (q order, then as written)."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = []
    for index, entry in enumerate(_split_outside_quotes(header, ",")):
        if not entry.strip():
            continue
        media, params = parse_media_type(entry)
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0:
            ranges.append((-q, index, MediaRange(media, params, q)))
    return [r for _q, _i, r in sorted(ranges, key=lambda t: (t[0], t[1]))]


def _matches(media: str, wanted: str) -> bool:
    if media in ("*/*", wanted):
        return True
    return media.endswith("/*") and wanted.startswith(media[:-1])


def _not_acceptable(what: str) -> HTTPException:
    return HTTPException(406, f"none of the accepted media types can carry {what}")


def _multipart_stream(
    parts: Iterable[tuple[str, bytes | Iterable[bytes]]], boundary: str
) -> Iterator[bytes]:
    """multipart/related body (RFC 2387): ``--B CRLF headers CRLF CRLF body CRLF`` per part,
    then ``--B--``."""
    for content_type, body in parts:
        yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii")
        if isinstance(body, bytes | bytearray | memoryview):
            yield bytes(body)
        else:
            yield from body
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def _multipart_response(
    parts: Iterable[tuple[str, bytes | Iterable[bytes]]],
    part_type: str,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> StreamingResponse:
    boundary = uuid.uuid4().hex
    return StreamingResponse(
        _multipart_stream(parts, boundary),
        status_code=status_code,
        media_type=f'multipart/related; type="{part_type}"; boundary={boundary}',
        headers=headers,
    )


# -- helpers ------------------------------------------------------------------------------


def _uid(value: str, what: str) -> str:
    """A UID path parameter (PS3.5 §9.1); anything else is 400, never a file name."""
    try:
        return check_uid(value, what)
    except InvalidUID as exc:
        raise HTTPException(400, str(exc)) from exc


def _base(request: Request) -> str:
    """Absolute URL of the DICOMweb root as the client called it (for RetrieveURL and
    BulkDataURI): scheme and Host header. Some clients (dicomweb-client) send a Host header
    without the port even on a non-default port; then the listening socket's port is used."""
    url = request.base_url
    host = request.headers.get("host", "")
    server = request.scope.get("server")
    default = 443 if url.scheme == "https" else 80
    if host and not re.search(r":\d+$", host) and server and server[1] and server[1] != default:
        url = url.replace(port=server[1])
    return str(url).rstrip("/") + "/dicom-web"


class ReadAudit:
    """Audit read events at study level, once per window (SPEC R3)."""

    def __init__(self, window: float = AUDIT_WINDOW, size: int = 4096) -> None:
        self.window = window
        self.size = size
        self._seen: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def record(self, request: Request, p: Principal, kind: str, study: str = "", **kw: str) -> None:
        key = (p.username, p.client, study, kind)
        now = time.monotonic()
        with self._lock:
            if self._seen.get(key, -1e18) > now - self.window:
                return
            if len(self._seen) >= self.size:
                self._seen = {k: t for k, t in self._seen.items() if t > now - self.window}
                if len(self._seen) >= self.size:
                    self._seen.clear()
            self._seen[key] = now
        context(request).audit.record(
            "read", user=p.username, client=p.client, study_uid=study, detail=kind, **kw
        )


_READ_AUDIT = ReadAudit()


def _audit_read(request: Request, p: Principal, kind: str, study: str = "", **kw: str) -> None:
    audit = getattr(request.app.state, "dicomweb_audit", None) or _READ_AUDIT
    audit.record(request, p, kind, study, **kw)


# -- DICOM JSON (PS3.18 §F.2) -------------------------------------------------------------

_NUMBER_VRS = frozenset({"IS", "DS", "SL", "SS", "UL", "US", "FL", "FD", "SV", "UV"})


def _person_name(text: str) -> dict[str, str]:
    groups = text.split("=")
    out = {}
    for name, value in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False):
        if value:
            out[name] = value
    return out


def _number(text: str, vr: str) -> int | float | str:
    try:
        if vr in ("IS", "SL", "SS", "UL", "US", "SV", "UV"):
            return int(text)
        value = float(text)
        return int(value) if value.is_integer() and vr == "DS" and "." not in text else value
    except ValueError:
        return text


def json_element(keyword: str, value: Any) -> tuple[str, dict[str, Any]]:
    """(8-hex tag, DICOM JSON attribute) of one query result value."""
    tag = int(tag_for_keyword(keyword) or 0)
    vr = dictionary_VR(tag)
    if " or " in vr:
        vr = vr.split(" or ")[0]
    key = f"{tag:08X}"
    if isinstance(value, dict):  # already a JSON attribute (from the stored JSON)
        return key, value
    if value is None or value == "" or value == []:
        return key, {"vr": vr}
    if isinstance(value, list):
        values = [str(v) for v in value]
    elif isinstance(value, int | float):
        return key, {"vr": vr, "Value": [value]}
    else:
        text = str(value)
        values = text.split("\\") if vr not in ("LT", "ST", "UT", "UR") else [text]
    if vr == "PN":
        return key, {"vr": vr, "Value": [_person_name(v) for v in values]}
    if vr in _NUMBER_VRS:
        return key, {"vr": vr, "Value": [_number(v, vr) for v in values if v != ""]}
    return key, {"vr": vr, "Value": values}


# -- QIDO-RS (PS3.18 §10.6) ---------------------------------------------------------------

#: Attributes returned by default per level (PS3.18 Tables 10.6.3-3, -4, -5).
STUDY_DEFAULTS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDescription",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_DEFAULTS = (
    "Modality",
    "SeriesDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDate",
    "SeriesTime",
    "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
)
INSTANCE_DEFAULTS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
    "AvailableTransferSyntaxUID",
)
_RESERVED = frozenset({"includefield", "limit", "offset", "fuzzymatching"})
#: Attributes answered by the protocol layer, never by the engine.
_COMPUTED = frozenset(
    {"SpecificCharacterSet", "RetrieveURL", "InstanceAvailability", "QueryRetrieveLevel"}
)
_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


def _keyword(attribute_id: str) -> str | None:
    """A keyword or an 8-hex tag as a keyword (None when unknown or private)."""
    if _HEX_TAG.match(attribute_id):
        return keyword_for_tag(int(attribute_id, 16)) or None
    if tag_for_keyword(attribute_id) is not None:
        return attribute_id
    return None


def _all_keywords(level: Level) -> list[str]:
    out = [a.keyword for a in CATALOGUE.values() if a.level_in(Model.STUDY_ROOT) <= level]
    out += [kw for kw in _JSON_LEVEL if (attribute_level(kw, Model.STUDY_ROOT) or 9) <= level]
    return out


@dataclass
class QidoRequest:
    query: Query
    limit: int | None
    offset: int
    all_fields: bool
    warnings: list[str]


def build_qido(request: Request, level: Level, fixed: dict[str, str]) -> QidoRequest:
    """Turn the query parameters of a QIDO-RS request into a :class:`Query` (400 on errors)."""
    params = request.query_params
    warnings: list[str] = []
    limit: int | None = None
    offset = 0
    includes: list[str] = []
    all_fields = False
    fuzzy = False
    plain: dict[str, list[str]] = {}
    seqs: dict[str, dict[str, str]] = {}
    for name, value in params.multi_items():
        if name == "limit":
            limit = _int_param(name, value, 0, MAX_LIMIT)
        elif name == "offset":
            offset = _int_param(name, value, 0, 2**31 - 1)
        elif name == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise HTTPException(400, "fuzzymatching must be true or false")
            fuzzy = value.lower() == "true"
        elif name == "includefield":
            for item in value.split(","):
                item = item.strip()
                if not item:
                    continue
                if item.lower() == "all":
                    all_fields = True
                    continue
                kw = _keyword(item.split(".")[0])
                if kw is None:
                    raise HTTPException(400, f"includefield: unknown attribute {item[:64]!r}")
                includes.append(kw)
        else:
            path = name.split(".")
            if len(path) > 2:
                raise HTTPException(400, f"{name[:80]!r}: nested sequence keys are not supported")
            kws = [_keyword(p) for p in path]
            if any(k is None for k in kws):
                raise HTTPException(400, f"unknown query key {name[:64]!r}")
            if len(path) == 2:
                seq, sub = kws[0], kws[1]
                assert seq is not None and sub is not None
                if dictionary_VR(tag_for_keyword(seq)) != "SQ":
                    raise HTTPException(400, f"{seq} is not a sequence")
                seqs.setdefault(seq, {})[sub] = value
            else:
                assert kws[0] is not None
                plain.setdefault(kws[0], []).append(value)
    for kw, value in fixed.items():
        plain[kw] = [value]
    keys: list[KeyMatch] = []
    unsupported: list[str] = []
    try:
        for kw, values in plain.items():
            if len(values) > 1:
                raise HTTPException(400, f"{kw} is given more than once")
            value = values[0]
            vr = dictionary_VR(tag_for_keyword(kw))
            if vr == "UI":
                value = value.replace(",", "\\")
            if vr == "SQ":
                raise HTTPException(400, f"{kw}: give sequence keys as {kw}.Attribute=value")
            if kw in _COMPUTED:
                continue
            if fuzzy and vr == "PN" and value and not any(c in value for c in "*?\\"):
                value = f"{value}*\\*^{value}*"
            keys.append(match_for(kw, value))
        for seq, items in seqs.items():
            keys.append(match_for(seq, [items]))
    except QueryError as exc:
        raise HTTPException(400, str(exc)) from exc
    for k in keys:
        if k.type is MatchType.UNIVERSAL:
            continue
        attr = CATALOGUE.get(k.keyword)
        if attr is not None:
            if k.type not in attr.matching:
                unsupported.append(k.keyword)
            continue
        jlevel = attribute_level(k.keyword, Model.STUDY_ROOT)
        if level is not Level.IMAGE and (jlevel is None or jlevel > level):
            unsupported.append(k.keyword)
    if unsupported:
        warnings.append(
            "the following attributes are not supported as query parameters at this level "
            "and were ignored: " + ", ".join(unsupported)
        )
    include: list[str] = []
    if level == Level.STUDY or "StudyInstanceUID" not in fixed:
        include += STUDY_DEFAULTS  # /series and /instances also answer study attributes
    if level == Level.SERIES or (level == Level.IMAGE and "SeriesInstanceUID" not in fixed):
        include += SERIES_DEFAULTS
    if level == Level.IMAGE:
        include += INSTANCE_DEFAULTS
        include.append("TimezoneOffsetFromUTC")
    if all_fields:
        include += _all_keywords(level)
    include += includes
    include = [kw for kw in dict.fromkeys(include) if kw not in _COMPUTED]
    query = Query(
        level=level,
        keys=keys,
        model=Model.STUDY_ROOT,
        relational=True,
        pn_case_insensitive=context(request).settings.pn_case_insensitive or fuzzy,
        include=include,
    )
    try:
        query.validate()
    except QueryError as exc:
        raise HTTPException(400, str(exc)) from exc
    return QidoRequest(query, limit, offset, all_fields, warnings)


def _int_param(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise HTTPException(400, f"{name} must be an integer") from exc
    if not low <= number <= high:
        raise HTTPException(400, f"{name} must be between {low} and {high}")
    return number


def _qido_json(row_values: dict[str, Any], level: Level, base: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kw, value in row_values.items():
        if kw.startswith("__"):
            continue
        key, elem = json_element(kw, value)
        out[key] = elem
    study = row_values.get("StudyInstanceUID", "")
    url = f"{base}/studies/{study}"
    if level >= Level.SERIES:
        url += f"/series/{row_values.get('SeriesInstanceUID', '')}"
    if level == Level.IMAGE:
        url += f"/instances/{row_values.get('SOPInstanceUID', '')}"
    out["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    out["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
    out["00081190"] = {"vr": "UR", "Value": [url]}
    return dict(sorted(out.items()))


def _full_instance_json(engine: Any, sop_uids: list[str]) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(INSTANCE.c.sop_instance_uid, INSTANCE.c.attributes).where(
                INSTANCE.c.sop_instance_uid.in_(sop_uids)
            )
        ).all()
    out = {}
    for uid, text in rows:
        try:
            model = json.loads(text or "{}")
        except ValueError:
            model = {}
        out[str(uid)] = model if isinstance(model, dict) else {}
    return out


def _qido_pages(
    ctx: Any, qido: QidoRequest, base: str, first: list[Any], rows: Iterator[Any]
) -> Iterator[bytes]:
    """The JSON array, produced in pages of 200 results (bounded memory)."""
    level = qido.query.level
    yield b"["
    sep = b""
    pending = list(first)
    try:
        while True:
            while len(pending) < 200:
                nxt = next(rows, None)
                if nxt is None:
                    break
                pending.append(nxt)
            if not pending:
                break
            extra: dict[str, dict[str, Any]] = {}
            if qido.all_fields and level == Level.IMAGE:
                extra = _full_instance_json(
                    ctx.archive.engine, [str(r.values.get("SOPInstanceUID")) for r in pending]
                )
            chunk = []
            for row in pending:
                model = _qido_json(row.values, level, base)
                full = extra.get(str(row.values.get("SOPInstanceUID")))
                if full:  # the stored attributes win; the protocol ones are ours
                    computed = {k: model[k] for k in ("00080005", "00080056", "00081190")}
                    model = dict(sorted({**model, **full, **computed}.items()))
                chunk.append(json.dumps(model, separators=(",", ":"), ensure_ascii=False))
            yield sep + ",".join(chunk).encode("utf-8")
            sep = b","
            pending = []
    finally:
        rows.close()  # type: ignore[attr-defined]
    yield b"]"


def _check_json_accept(request: Request) -> None:
    for r in parse_accept(request.headers.get("accept")):
        if r.media in ("*/*", "application/*", DICOM_JSON, "application/json"):
            return
        if r.multipart and r.part_type in (DICOM_JSON, ""):
            return
    raise HTTPException(406, "results are available as application/dicom+json only")


class _Rows:
    """The rest of a result (at most ``limit``), closing the engine's cursor on close."""

    def __init__(self, rows: Iterator[Any], limit: int | None) -> None:
        self.rows = rows
        self.rest = rows if limit is None else islice(rows, max(limit, 0))

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return next(self.rest)

    def close(self) -> None:
        self.rows.close()  # type: ignore[attr-defined]


def _qido(request: Request, p: Principal, level: Level, fixed: dict[str, str]) -> Response:
    """Run a QIDO-RS search. ``X-Total-Count`` (when paging) costs a COUNT query only when
    the page is full: a short page already tells the total."""
    ctx = context(request)
    _check_json_accept(request)
    qido = build_qido(request, level, fixed)
    engine = QueryEngine(ctx.archive.engine)
    headers: dict[str, str] = {}
    if qido.warnings:
        headers["Warning"] = "; ".join(f'299 pacsbox "{w}"' for w in qido.warnings)
    paging = qido.limit is not None or qido.offset > 0
    buffered = qido.limit is not None and qido.limit <= PAGE_BUFFER
    try:
        if paging and not buffered:
            headers["X-Total-Count"] = str(engine.count(qido.query))
        rows = engine.run(qido.query)
        take = qido.limit if buffered else 1
        first = list(islice(rows, qido.offset, qido.offset + (take or 0)))
        if paging and buffered:
            if len(first) < (qido.limit or 0) and (first or qido.offset == 0):
                headers["X-Total-Count"] = str(qido.offset + len(first))
            else:
                headers["X-Total-Count"] = str(engine.count(qido.query))
    except QueryError as exc:
        raise HTTPException(400, str(exc)) from exc
    study = fixed.get("StudyInstanceUID", "")
    _audit_read(request, p, f"QIDO-RS {level.name.lower()} search", study)
    if not first or qido.limit == 0:
        rows.close()  # type: ignore[attr-defined]
        return Response(b"[]", media_type=DICOM_JSON, headers=headers)
    remaining = 0 if buffered else (None if qido.limit is None else qido.limit - 1)
    return StreamingResponse(
        _qido_pages(ctx, qido, _base(request), first, _Rows(rows, remaining)),
        media_type=DICOM_JSON,
        headers=headers,
    )


@router.get("/studies", summary="QIDO-RS: search for studies")
def qido_studies(request: Request, p: Principal = Depends(require("view"))) -> Response:
    return _qido(request, p, Level.STUDY, {})


@router.get("/series", summary="QIDO-RS: search for series")
def qido_series(request: Request, p: Principal = Depends(require("view"))) -> Response:
    return _qido(request, p, Level.SERIES, {})


@router.get("/instances", summary="QIDO-RS: search for instances")
def qido_instances(request: Request, p: Principal = Depends(require("view"))) -> Response:
    return _qido(request, p, Level.IMAGE, {})


@router.get("/studies/{study}/series", summary="QIDO-RS: series of a study")
def qido_study_series(
    study: str, request: Request, p: Principal = Depends(require("view"))
) -> Response:
    return _qido(request, p, Level.SERIES, {"StudyInstanceUID": _uid(study, "Study Instance UID")})


@router.get("/studies/{study}/instances", summary="QIDO-RS: instances of a study")
def qido_study_instances(
    study: str, request: Request, p: Principal = Depends(require("view"))
) -> Response:
    return _qido(request, p, Level.IMAGE, {"StudyInstanceUID": _uid(study, "Study Instance UID")})


@router.get("/studies/{study}/series/{series}/instances", summary="QIDO-RS: instances of a series")
def qido_series_instances(
    study: str, series: str, request: Request, p: Principal = Depends(require("view"))
) -> Response:
    fixed = {
        "StudyInstanceUID": _uid(study, "Study Instance UID"),
        "SeriesInstanceUID": _uid(series, "Series Instance UID"),
    }
    return _qido(request, p, Level.IMAGE, fixed)


# -- WADO-RS: instances (PS3.18 §10.4.1.1.1-3) --------------------------------------------


@dataclass(frozen=True)
class DicomAccept:
    """What the client accepts for application/dicom parts."""

    multipart: bool
    syntaxes: tuple[str, ...]  #: acceptable transfer syntaxes, best first; "*" = as stored


def dicom_accept(header: str | None, single_allowed: bool) -> DicomAccept:
    """The application/dicom ranges of an Accept header (406 when there is none)."""
    syntaxes: list[str] = []
    multipart: bool | None = None
    for r in parse_accept(header):
        if r.multipart:
            if r.part_type not in ("application/dicom", "", "*/*", "application/*"):
                continue
            is_multi = True
        elif _matches(r.media, "application/dicom") or r.media == "multipart/*":
            if r.media == "application/dicom" and not single_allowed:
                continue
            is_multi = r.media != "application/dicom"
        else:
            continue
        if multipart is None:
            multipart = is_multi
        elif multipart != is_multi:
            continue
        ts = r.transfer_syntax or EXPLICIT_LE
        if ts not in syntaxes:
            syntaxes.append(ts)
    if multipart is None:
        raise _not_acceptable('instances (ask for multipart/related; type="application/dicom")')
    return DicomAccept(multipart, tuple(syntaxes))


def _can_carry(stored_ts: str, syntaxes: tuple[str, ...]) -> bool:
    return "*" in syntaxes or plan_transfer(stored_ts, list(syntaxes)).possible


def _instance_part(
    item: RetrieveItem, syntaxes: tuple[str, ...]
) -> tuple[str, Iterator[bytes]] | None:
    """(part Content-Type, body chunks) of one instance, or None when it cannot be sent."""
    stored = item.transfer_syntax_uid
    if "*" in syntaxes or stored in syntaxes:
        try:
            fh = open(item.path, "rb")  # noqa: SIM115 - closed by the generator
        except OSError:
            log.warning("WADO-RS: %s is missing from storage", item.sop_instance_uid)
            return None

        def chunks() -> Iterator[bytes]:
            with fh:
                if item.storage_format != "part10":
                    yield encode_file_meta(item.sop_class_uid, item.sop_instance_uid, stored)
                while chunk := fh.read(CHUNK):
                    yield chunk

        return f"application/dicom; transfer-syntax={stored}", chunks()
    plan = plan_transfer(stored, list(syntaxes))
    if not plan.targets:
        return None
    targets = sorted(plan.targets, key=syntaxes.index)  # the client's order of preference
    try:
        ts, data = transcode(item.path, stored, targets)
    except TranscodeError as exc:
        log.warning("WADO-RS: %s not sent: %s", item.sop_instance_uid, exc)
        return None
    meta = encode_file_meta(item.sop_class_uid, item.sop_instance_uid, ts)
    return f"application/dicom; transfer-syntax={ts}", iter((meta, data))


def _instance_parts(
    items: Iterator[RetrieveItem], syntaxes: tuple[str, ...]
) -> Iterator[tuple[str, Iterator[bytes]]]:
    for item in items:
        part = _instance_part(item, syntaxes)
        if part is not None:
            yield part


def _retrieve(
    request: Request, p: Principal, study: str, series: str = "", sop: str = ""
) -> Response:
    ctx = context(request)
    study = _uid(study, "Study Instance UID")
    series = _uid(series, "Series Instance UID") if series else ""
    sop = _uid(sop, "SOP Instance UID") if sop else ""
    accept = dicom_accept(request.headers.get("accept"), single_allowed=bool(sop))
    level = "IMAGE" if sop else "SERIES" if series else "STUDY"
    req = RetrieveRequest(
        level,
        study_uids=[study],
        series_uids=[series] if series else [],
        sop_uids=[sop] if sop else [],
    )
    selection = RetrieveSelection(ctx.archive.engine, Path(ctx.archive.store.root), req)
    pairs = selection.sop_classes()
    if not pairs:
        raise HTTPException(
            404, f"no {level.lower().replace('image', 'instance')} {sop or series or study}"
        )
    carried = [ts for _cls, ts in pairs if _can_carry(ts, accept.syntaxes)]
    if not carried:
        raise _not_acceptable("these instances in the requested transfer syntaxes")
    headers = {}
    status = 200
    if len(carried) < len(pairs):
        status = 206
        headers["Warning"] = (
            '299 pacsbox "some instances cannot be converted to an accepted transfer syntax '
            'and are left out"'
        )
    _audit_read(request, p, "WADO-RS retrieve", study)
    if not accept.multipart:
        item = next(selection.iter(), None)
        part = _instance_part(item, accept.syntaxes) if item else None
        if part is None:
            raise _not_acceptable("this instance")
        ctype, body = part
        return StreamingResponse(body, media_type=ctype)
    return _multipart_response(
        _instance_parts(selection.iter(), accept.syntaxes),
        "application/dicom",
        status_code=status,
        headers=headers,
    )


@router.get("/studies/{study}", summary="WADO-RS: retrieve a study")
def wado_study(study: str, request: Request, p: Principal = Depends(require("view"))) -> Response:
    return _retrieve(request, p, study)


@router.get("/studies/{study}/series/{series}", summary="WADO-RS: retrieve a series")
def wado_series(
    study: str, series: str, request: Request, p: Principal = Depends(require("view"))
) -> Response:
    return _retrieve(request, p, study, series)


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}", summary="WADO-RS: retrieve an instance"
)
def wado_instance(
    study: str, series: str, sop: str, request: Request, p: Principal = Depends(require("view"))
) -> Response:
    return _retrieve(request, p, study, series, sop)


# -- WADO-RS: metadata (PS3.18 §10.4.1.1.2) -----------------------------------------------

_TOP_BULK = re.compile(r'"([0-9A-F]{8})":\{"vr":"(OB|OD|OF|OL|OV|OW|UN)"\}')
#: a bulk placeholder anywhere (top level: ``{"vr":"OB"}``; in items: an empty BulkDataURI)
_NEEDS_URI = re.compile(r'\{"vr":"(?:O[BDFLVW]|UN)"\}|"BulkDataURI":""')
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def _instance_url(base: str, study: str, series: str, sop: str) -> str:
    return f"{base}/studies/{study}/series/{series}/instances/{sop}"


def _walk_bulk(model: dict[str, Any], url: str, path: str) -> None:
    """Give every bulk (binary without inline value) attribute its BulkDataURI."""
    for tag, elem in model.items():
        if not isinstance(elem, dict):
            continue
        vr = elem.get("vr")
        if vr == "SQ":
            for index, item in enumerate(elem.get("Value") or []):
                if isinstance(item, dict):
                    _walk_bulk(item, url, f"{path}{tag}/{index}/")
        elif vr in _BINARY_VRS and "Value" not in elem and "InlineBinary" not in elem:
            elem.pop("BulkDataURI", None)
            elem["BulkDataURI"] = f"{url}/bulkdata/{path}{tag}"


def instance_metadata(
    attributes: str, url: str, transfer_syntax: str, bits_allocated: int | None, has_pixels: bool
) -> str:
    """The stored DICOM JSON of an instance as WADO-RS metadata (a JSON object text).

    The common case is string work only: Pixel Data is appended with its BulkDataURI. Bulk
    placeholders get their BulkDataURI by a regular expression when there are no sequences
    (their items could hold look-alikes), else through a parse of that one instance.
    """
    text = attributes.strip() if attributes else "{}"
    if _NEEDS_URI.search(text) is not None:  # rare: one scan with a literal prefix decides
        if '"vr":"SQ"' in text:
            model = json.loads(text)
            _walk_bulk(model, url, "")
            text = json.dumps(model, separators=(",", ":"), ensure_ascii=False)
        else:
            text = _TOP_BULK.sub(
                lambda m: (
                    f'"{m.group(1)}":{{"vr":"{m.group(2)}","BulkDataURI":'
                    f'"{url}/bulkdata/{m.group(1)}"}}'
                ),
                text,
            )
    if not has_pixels:
        return text
    vr = "OW" if transfer_syntax in NATIVE_SYNTAXES and (bits_allocated or 8) > 8 else "OB"
    pixel = f'"7FE00010":{{"vr":"{vr}","BulkDataURI":"{url}/bulkdata/7FE00010"}}'
    if text == "{}":
        return "{" + pixel + "}"
    return text[:-1] + "," + pixel + "}"


_META_COLS = (
    INSTANCE.c.sop_instance_uid,
    INSTANCE.c.transfer_syntax_uid,
    INSTANCE.c.bits_allocated,
    INSTANCE.c.rows,
    INSTANCE.c.attributes,
    SERIES.c.series_instance_uid,
)


def _metadata_chunks(engine: Any, stmt: Any, base: str, study: str) -> Iterator[bytes]:
    yield b"["
    sep = b""
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=200).execute(stmt)
        try:
            for batch in result.partitions():
                texts = [
                    instance_metadata(
                        attrs,
                        _instance_url(base, study, se, sop),
                        ts,
                        bits,
                        rows is not None,
                    )
                    for sop, ts, bits, rows, attrs, se in batch
                ]
                yield sep + ",".join(texts).encode("utf-8")
                sep = b","
        finally:
            result.close()
    yield b"]"


def _metadata(
    request: Request, p: Principal, study: str, series: str = "", sop: str = ""
) -> Response:
    ctx = context(request)
    study = _uid(study, "Study Instance UID")
    series = _uid(series, "Series Instance UID") if series else ""
    sop = _uid(sop, "SOP Instance UID") if sop else ""
    _check_json_accept(request)
    conds = [STUDY.c.study_instance_uid == study]
    if series:
        conds.append(SERIES.c.series_instance_uid == series)
    if sop:
        conds.append(INSTANCE.c.sop_instance_uid == sop)
    stmt = (
        select(*_META_COLS)
        .select_from(
            INSTANCE.join(SERIES, SERIES.c.id == INSTANCE.c.series_fk).join(
                STUDY, STUDY.c.id == SERIES.c.study_fk
            )
        )
        .where(and_(*conds))
        .order_by(SERIES.c.id, func.coalesce(INSTANCE.c.instance_number, 2**31 - 1), INSTANCE.c.id)
    )
    engine = ctx.archive.engine
    base = _base(request)
    _audit_read(request, p, "WADO-RS metadata", study)
    if sop or series:
        with engine.connect() as conn:
            rows = conn.execute(stmt).all()
        if not rows:
            raise HTTPException(404, f"no {'instance' if sop else 'series'} {sop or series}")
        body = ",".join(
            instance_metadata(a, _instance_url(base, study, se, uid), ts, bits, r is not None)
            for uid, ts, bits, r, a, se in rows
        )
        return Response("[" + body + "]", media_type=DICOM_JSON)
    with engine.connect() as conn:
        found = conn.execute(select(STUDY.c.id).where(STUDY.c.study_instance_uid == study)).first()
    if found is None:
        raise HTTPException(404, f"no study {study}")
    return StreamingResponse(_metadata_chunks(engine, stmt, base, study), media_type=DICOM_JSON)


@router.get("/studies/{study}/metadata", summary="WADO-RS: study metadata")
def meta_study(study: str, request: Request, p: Principal = Depends(require("view"))) -> Response:
    return _metadata(request, p, study)


@router.get("/studies/{study}/series/{series}/metadata", summary="WADO-RS: series metadata")
def meta_series(
    study: str, series: str, request: Request, p: Principal = Depends(require("view"))
) -> Response:
    return _metadata(request, p, study, series)


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/metadata",
    summary="WADO-RS: instance metadata",
)
def meta_instance(
    study: str, series: str, sop: str, request: Request, p: Principal = Depends(require("view"))
) -> Response:
    return _metadata(request, p, study, series, sop)


# -- WADO-RS: frames and bulk data (PS3.18 §10.4.1.1.5, §10.4.1.1.6) -----------------------


@dataclass(frozen=True)
class _Instance:
    path: Path
    transfer_syntax: str
    facts: ImageFacts | None
    sop_class: str


def _one_instance(ctx: Any, study: str, series: str, sop: str) -> _Instance:
    """The stored file and image facts of one instance (one query; 404 unless the instance
    belongs to that series of that study)."""
    study = _uid(study, "Study Instance UID")
    series = _uid(series, "Series Instance UID")
    sop = _uid(sop, "SOP Instance UID")
    stmt = (
        select(
            INSTANCE.c.file_path,
            INSTANCE.c.linked,
            INSTANCE.c.transfer_syntax_uid,
            INSTANCE.c.sop_class_uid,
            INSTANCE.c.rows,
            INSTANCE.c.columns,
            INSTANCE.c.samples_per_pixel,
            INSTANCE.c.bits_allocated,
            INSTANCE.c.number_of_frames,
        )
        .select_from(
            INSTANCE.join(SERIES, SERIES.c.id == INSTANCE.c.series_fk).join(
                STUDY, STUDY.c.id == SERIES.c.study_fk
            )
        )
        .where(
            INSTANCE.c.sop_instance_uid == sop,
            SERIES.c.series_instance_uid == series,
            STUDY.c.study_instance_uid == study,
        )
    )
    with ctx.archive.engine.connect() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        raise HTTPException(404, f"no instance {sop} in series {series} of study {study}")
    key, linked, ts, sop_class, rows, columns, spp, bits, frames = row
    try:
        path = ctx.archive.store.locate(key, linked)
    except ValueError as exc:  # a damaged index row must never name a file outside the store
        raise HTTPException(500, "the instance's storage key is invalid") from exc
    facts = None
    if rows and columns:
        facts = ImageFacts(int(rows), int(columns), int(spp or 1), int(bits or 8), int(frames or 1))
    return _Instance(path, str(ts), facts, str(sop_class))


def parse_frame_list(text: str, frames: int) -> list[int]:
    """``1,3,5`` → [1, 3, 5] (PS3.18 §8.4.1.1); 400 when malformed, 404 beyond the last."""
    numbers = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece.isdigit() or len(piece) > 9:
            raise HTTPException(400, f"frame list: {piece[:20]!r} is not a frame number")
        n = int(piece)
        if n < 1:
            raise HTTPException(400, "frame numbers start at 1")
        if n > frames:
            raise HTTPException(404, f"frame {n} does not exist (the instance has {frames})")
        numbers.append(n)
    if not numbers or len(numbers) > MAX_FRAMES_PER_REQUEST:
        raise HTTPException(400, "give between 1 and 10000 frame numbers")
    return numbers


@dataclass(frozen=True)
class _FramePlan:
    multipart: bool
    media: str  #: part media type
    syntax: str  #: transfer syntax of the parts
    how: str  #: "stored" | "decode" | "encode"


def plan_frames(header: str | None, stored_ts: str, count: int) -> _FramePlan:
    """Pick the first acceptable way to deliver the frames (PS3.18 §8.7.3 and
    Table 8.7.3-5), or 406."""
    native = stored_ts in NATIVE_SYNTAXES
    for r in parse_accept(header):
        if r.multipart:
            ptype = r.part_type or "application/octet-stream"
            multi = True
        elif r.media in ("*/*", "multipart/*"):
            ptype, multi = "*/*", r.media == "multipart/*" or count > 1
        else:
            ptype, multi = r.media, False
            if count > 1:
                continue
        ts = r.transfer_syntax
        if ptype in ("*/*", "application/*"):
            ts = ts or "*"
            ptype = (
                "application/octet-stream"
                if native
                else MEDIA_TYPE_OF_SYNTAX.get(stored_ts, "application/octet-stream")
            )
        if ptype == "application/octet-stream":
            if native and ts in (None, "*", EXPLICIT_LE, IMPLICIT_LE, stored_ts):
                return _FramePlan(multi, ptype, EXPLICIT_LE, "stored")
            if not native and ts in ("*", stored_ts):
                return _FramePlan(multi, ptype, stored_ts, "stored")
            if not native and ts in (None, EXPLICIT_LE) and can_decode(stored_ts):
                return _FramePlan(multi, ptype, EXPLICIT_LE, "decode")
            continue
        family = IMAGE_MEDIA_TYPES.get(ptype)
        if family is None:
            continue
        if stored_ts in family and ts in (None, "*", stored_ts):
            return _FramePlan(multi, ptype, stored_ts, "stored")
        target = ts if ts not in (None, "*") else family[0]
        if (
            target in family
            and target in LOSSLESS_TARGETS
            and can_encode(target)
            and (native or can_decode(stored_ts))
        ):
            return _FramePlan(multi, ptype, target, "encode")
    raise _not_acceptable(f"frames stored as {stored_ts}")


def _frame_bodies(inst: _Instance, numbers: list[int], plan: _FramePlan) -> Iterator[bytes]:
    if plan.how == "stored":
        assert inst.facts is not None
        for start in range(0, len(numbers), 16):  # 16 frames at a time: bounded memory
            batch = numbers[start : start + 16]
            yield from stored_frames(inst.path, inst.transfer_syntax, inst.facts, batch)
    elif plan.how == "decode":
        for n in numbers:
            yield decoded_frame(inst.path, n)
    else:
        for n in numbers:
            yield encoded_frame(inst.path, n, plan.syntax)


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}",
    summary="WADO-RS: frames of an instance",
)
def wado_frames(
    study: str,
    series: str,
    sop: str,
    frames: str,
    request: Request,
    p: Principal = Depends(require("view")),
) -> Response:
    ctx = context(request)
    inst = _one_instance(ctx, study, series, sop)
    if inst.facts is None:
        raise HTTPException(404, "the instance has no image pixel data")
    numbers = parse_frame_list(frames, inst.facts.frames)
    plan = plan_frames(request.headers.get("accept"), inst.transfer_syntax, len(numbers))
    _audit_read(request, p, "WADO-RS frames", study)
    ctype = f"{plan.media}; transfer-syntax={plan.syntax}"
    try:
        first = next(_frame_bodies(inst, numbers[:1], plan))
    except FrameError as exc:
        raise HTTPException(exc.status or 406, str(exc)) from exc
    if not plan.multipart:
        return Response(first, media_type=ctype)

    def parts() -> Iterator[tuple[str, bytes]]:
        yield ctype, first
        try:
            for body in _frame_bodies(inst, numbers[1:], plan):
                yield ctype, body
        except FrameError as exc:  # the status line is gone: end the body early
            log.warning("WADO-RS frames of %s: %s", sop, exc)

    return _multipart_response(parts(), plan.media)


def _bulk_steps(path: str) -> list[int]:
    pieces = [p for p in path.split("/") if p]
    if not pieces or len(pieces) % 2 == 0 or len(pieces) > 15:
        raise HTTPException(400, "bulk data path: tag[/item/tag]...")
    steps = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            if not _HEX_TAG.match(piece):
                raise HTTPException(400, f"bulk data path: {piece[:20]!r} is not a tag")
            steps.append(int(piece, 16))
        else:
            if not piece.isdigit() or len(piece) > 6:
                raise HTTPException(400, f"bulk data path: {piece[:20]!r} is not an item index")
            steps.append(int(piece))
    return steps


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tagpath:path}",
    summary="WADO-RS: bulk data of an instance",
)
def wado_bulkdata(
    study: str,
    series: str,
    sop: str,
    tagpath: str,
    request: Request,
    p: Principal = Depends(require("view")),
) -> Response:
    """Bulk data named by the BulkDataURIs of /metadata: a top-level tag or
    ``seq/item/tag`` paths. Pixel Data answers as the frames would (all frames)."""
    ctx = context(request)
    inst = _one_instance(ctx, study, series, sop)
    steps = _bulk_steps(tagpath)
    _audit_read(request, p, "WADO-RS bulkdata", study)
    if steps == [0x7FE00010]:
        if inst.facts is None:
            raise HTTPException(404, "the instance has no image pixel data")
        numbers = list(range(1, inst.facts.frames + 1))
        plan = plan_frames(request.headers.get("accept"), inst.transfer_syntax, len(numbers))
        ctype = f"{plan.media}; transfer-syntax={plan.syntax}"
        if not plan.multipart:
            try:
                return Response(next(_frame_bodies(inst, numbers, plan)), media_type=ctype)
            except FrameError as exc:
                raise HTTPException(exc.status or 406, str(exc)) from exc
        return _multipart_response(
            ((ctype, b) for b in _frame_bodies(inst, numbers, plan)), plan.media
        )
    ok = False
    for r in parse_accept(request.headers.get("accept")):
        if r.part_type in ("application/octet-stream", "*/*", "application/*") or (
            r.multipart and not r.part_type
        ):
            ok = True
            multi = r.multipart
            break
    if not ok:
        raise _not_acceptable("bulk data (application/octet-stream)")
    try:
        data = element_value(inst.path, steps)
    except FrameError as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    if not multi:
        return Response(data, media_type="application/octet-stream")
    return _multipart_response([("application/octet-stream", data)], "application/octet-stream")


# -- STOW-RS (PS3.18 §10.5) ---------------------------------------------------------------


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    path: str = ""
    fh: Any = None
    size: int = 0


class _StowParser:
    """Streams a multipart body (STOW-RS multipart/related, the REST upload's
    multipart/form-data) into one temporary file per part: each byte is written once."""

    def __init__(self, boundary: str, spool: Path, limit: int) -> None:
        from python_multipart.multipart import MultipartParser

        self.spool = spool
        self.limit = limit
        self.done: list[_Part] = []
        self.current: _Part | None = None
        self._field = b""
        self._value = b""
        self.total = 0
        self.parser = MultipartParser(
            boundary.encode("latin-1"),
            {
                "on_part_begin": self._begin,
                "on_header_field": self._hfield,
                "on_header_value": self._hvalue,
                "on_header_end": self._hend,
                "on_part_data": self._data,
                "on_part_end": self._end,
            },
        )

    def _begin(self) -> None:
        if len(self.done) >= MAX_STOW_PARTS:
            raise HTTPException(413, f"more than {MAX_STOW_PARTS} parts")
        fd, name = tempfile.mkstemp(prefix="stow-", suffix=".part", dir=self.spool)
        self.current = _Part(path=name, fh=os.fdopen(fd, "wb"))

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]
        self._check_header()

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        self._check_header()

    def _check_header(self) -> None:
        if len(self._field) + len(self._value) > MAX_PART_HEADER:
            raise HTTPException(400, f"a part header is longer than {MAX_PART_HEADER} bytes")
        if self.current is not None and len(self.current.headers) > 50:
            raise HTTPException(400, "a part has more than 50 header fields")

    def _hend(self) -> None:
        if self.current is not None:
            name = self._field.decode("latin-1").strip().lower()
            self.current.headers[name] = self._value.decode("latin-1").strip()
        self._field = self._value = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.current is not None:
            self.current.fh.write(data[start:end])
            self.current.size += end - start

    def _end(self) -> None:
        if self.current is not None:
            self.current.fh.close()
            self.done.append(self.current)
            self.current = None

    def feed(self, chunk: bytes) -> list[_Part]:
        self.total += len(chunk)
        if self.total > self.limit:
            raise HTTPException(413, f"the request body exceeds {self.limit} bytes")
        self.parser.write(chunk)
        out, self.done = self.done, []
        return out

    def cleanup(self) -> None:
        if self.current is not None:
            with contextlib.suppress(OSError):
                self.current.fh.close()
                os.unlink(self.current.path)


@dataclass
class _StowResult:
    sop_class: str
    sop_uid: str
    study: str
    series: str
    status: int  #: 0 = stored
    message: str = ""


def _store_part(
    ctx: Any, part: _Part, batch: StoreBatch, study: str, part_type: str
) -> _StowResult:
    """Store one part through the ingest path; the outcome is counted in the request's audit
    batch (one ``store`` event per study, written when the request ends)."""
    try:
        result = _ingest_part(ctx, part, study, part_type)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(part.path)
    if result.status == 0:
        batch.stored(result.study, result.message, part.size)
    else:
        ctx.metrics.stored.labels("failed").inc()
        batch.failed(result.study[:64], f"{result.sop_uid} {result.status:04X}: {result.message}")
    return result


def _ingest_part(ctx: Any, part: _Part, study: str, part_type: str) -> _StowResult:
    media, _params = parse_media_type(part.headers.get("content-type") or part_type)
    if media != "application/dicom":
        return _StowResult("", "", "", "", 0xC000, f"part of type {media[:60]!r} is not DICOM")
    path = Path(part.path)
    try:
        hdr = read_part10(path).header
    except Exception as exc:  # HeaderError, OSError, anything a hostile part provokes
        return _StowResult("", "", "", "", 0xC000, f"not a DICOM data set: {exc}"[:300])
    ids = (
        _clean_uid(hdr.sop_class_uid),
        _clean_uid(hdr.sop_instance_uid),
        _clean_uid(hdr.study_instance_uid),
        _clean_uid(hdr.series_instance_uid),
    )
    if study and hdr.study_instance_uid != study:
        return _StowResult(
            *ids, 0xA900, f"Study Instance UID {ids[2]} differs from {study} of the URL"
        )
    try:
        result = ctx.archive.ingest.store_file(path, source_ae=STOW_SOURCE_AE)
    except IngestRefused as exc:
        return _StowResult(*ids, exc.status, exc.message.replace(part.path, "part")[:500])
    ctx.metrics.stored.labels(result.outcome).inc()
    return _StowResult(
        result.sop_class_uid,
        result.sop_instance_uid,
        result.study_instance_uid,
        result.series_instance_uid,
        0,
        result.outcome,
    )


StowParser = _StowParser


def _clean_uid(value: str) -> str:
    try:
        return check_uid(value or "")
    except InvalidUID:
        return ""


def _uid_or_empty(value: str) -> dict[str, Any]:
    try:
        return {"vr": "UI", "Value": [check_uid(value)]}
    except InvalidUID:
        return {"vr": "UI"}


def stow_response(results: list[_StowResult], base: str) -> tuple[int, dict[str, Any]]:
    """HTTP status and the Store Instances Response (PS3.18 §10.5.3, Table 10.5.3-1)."""
    stored = [r for r in results if r.status == 0]
    failed = [r for r in results if r.status != 0]
    body: dict[str, Any] = {"00080005": {"vr": "CS", "Value": ["ISO_IR 192"]}}
    studies = {r.study for r in stored}
    if len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{studies.pop()}"]}
    failed_items = []
    for r in failed:
        failed_items.append(
            {
                "00081150": _uid_or_empty(r.sop_class),
                "00081155": _uid_or_empty(r.sop_uid),
                "00081197": {"vr": "US", "Value": [r.status]},
            }
        )
    body["00081198"] = {"vr": "SQ", "Value": failed_items} if failed_items else {"vr": "SQ"}
    ref_items = []
    for r in stored:
        ref_items.append(
            {
                "00081150": {"vr": "UI", "Value": [r.sop_class]},
                "00081155": {"vr": "UI", "Value": [r.sop_uid]},
                "00081190": {
                    "vr": "UR",
                    "Value": [_instance_url(base, r.study, r.series, r.sop_uid)],
                },
            }
        )
    body["00081199"] = {"vr": "SQ", "Value": ref_items} if ref_items else {"vr": "SQ"}
    if failed and not stored:
        status = 409
    elif failed:
        status = 202
    else:
        status = 200
    return status, body


#: RFC 2046 §5.1.1 boundary characters (shared with the REST upload).
BOUNDARY_RE = _BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]+")


async def _stow(request: Request, p: Principal, study: str) -> Response:
    ctx = context(request)
    media, params = parse_media_type(request.headers.get("content-type", ""))
    if media != "multipart/related":
        raise HTTPException(415, 'send multipart/related; type="application/dicom"')
    part_type = params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise HTTPException(
            415, f"parts of type {part_type!r} are not supported; send application/dicom"
        )
    boundary = params.get("boundary", "")
    # RFC 2046 allows 70 characters; some senders use more (Orthanc: two UUIDs, 73)
    if not boundary or len(boundary) > 200 or not _BOUNDARY.fullmatch(boundary):
        raise HTTPException(400, "multipart/related needs a valid boundary parameter")
    length = request.headers.get("content-length")
    limit = ctx.settings.stow_max_bytes
    if length and length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"the request body exceeds {limit} bytes")
    spool = Path(ctx.settings.data_dir) / "tmp"
    spool.mkdir(parents=True, exist_ok=True)
    parser = _StowParser(boundary, spool, limit)
    batch = StoreBatch(ctx.archive.ingest.audit, p.username, p.client, "STOW-RS")
    results: list[_StowResult] = await receive_parts(
        request, parser, batch, lambda part: _store_part(ctx, part, batch, study, part_type)
    )
    if not results:
        raise HTTPException(400, "no part found in the multipart body (check the boundary)")
    status, body = stow_response(results, _base(request))
    headers = {}
    problems = [f"{r.status:04X} {r.message}" for r in results if r.status][:5]
    if problems:
        safe = "; ".join(problems).replace('"', "'").replace("\r", " ").replace("\n", " ")
        headers["Warning"] = f'299 pacsbox "{safe[:900]}"'
    return JSONResponse(body, status_code=status, media_type=DICOM_JSON, headers=headers)


async def receive_parts(
    request: Request, parser: _StowParser, batch: StoreBatch, store: Callable[[Any], Any]
) -> list[Any]:
    """Stream the request body through ``parser`` and call ``store(part)`` (in a worker
    thread) for each complete part as soon as it is on disk; a None result is left out.
    Malformed or unterminated bodies are a 400. Spool files are removed and the audit batch
    written whatever happens. Shared by STOW-RS and the REST upload."""
    from python_multipart.exceptions import MultipartParseError

    results: list[Any] = []
    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            try:
                parts = await run_in_threadpool(parser.feed, chunk)
            except MultipartParseError as exc:
                raise HTTPException(400, f"malformed multipart body: {exc}") from exc
            for part in parts:
                result = await run_in_threadpool(store, part)
                if result is not None:
                    results.append(result)
        if parser.current is not None:
            raise HTTPException(400, "the multipart body ends inside a part (no closing boundary)")
    finally:
        parser.cleanup()
        for part in parser.done:
            with contextlib.suppress(OSError):
                os.unlink(part.path)
        await run_in_threadpool(batch.flush)
    return results


@router.post("/studies", summary="STOW-RS: store instances")
async def stow_studies(request: Request, p: Principal = Depends(require("upload"))) -> Response:
    return await _stow(request, p, "")


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study")
async def stow_study(
    study: str, request: Request, p: Principal = Depends(require("upload"))
) -> Response:
    return await _stow(request, p, _uid(study, "Study Instance UID"))


# -- CORS and installation ------------------------------------------------------------------


class DicomwebCORS:
    """CORS (Fetch standard) for ``/dicom-web`` and ``/wado`` only, from ``cors_origins``.

    No credentials mode: browsers do not send cookies cross-site, so a foreign page cannot
    ride a login session; a viewer on an allowed origin authenticates with an
    ``Authorization`` header (Basic or Bearer token)."""

    PREFIXES = ("/dicom-web", "/wado")

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        from starlette.middleware.cors import CORSMiddleware

        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["GET", "POST", "HEAD", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type", "X-Requested-With"],
            expose_headers=["X-Total-Count", "Warning", "Content-Type", "Content-Length"],
            allow_credentials=False,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith(self.PREFIXES):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _watch_runtime_settings(app: FastAPI, settings: Any) -> None:
    """Settings changed at runtime (PATCH /api/settings, in any HTTP worker, or by hand in
    the config file) reach this process: the app's settings, the archive's and the ingest
    policies (pacsbox.settings_runtime)."""
    from pacsbox.settings import Settings
    from pacsbox.settings_runtime import apply_changes, ingest_updater, watch_settings

    if not isinstance(settings, Settings):
        return

    def on_change(changes: dict[str, Any]) -> None:
        ctx = getattr(app.state, "pacs", None)
        if ctx is None:
            return
        if ctx.archive.settings is not settings and isinstance(ctx.archive.settings, Settings):
            apply_changes(ctx.archive.settings, changes)
        ingest_updater(ctx.archive.ingest)(changes)

    watch_settings(settings, on_change)


def install(app: FastAPI, settings: Any) -> None:
    """Register the DICOMweb router (and CORS when ``cors_origins`` is set) on the app."""
    app.include_router(router)
    app.state.dicomweb_audit = ReadAudit()
    _watch_runtime_settings(app, settings)
    origins = [o.strip() for o in (settings.cors_origins or []) if o.strip()]
    if origins:
        app.add_middleware(DicomwebCORS, origins=origins)
