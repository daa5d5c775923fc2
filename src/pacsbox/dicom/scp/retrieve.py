"""Query/Retrieve C-MOVE and C-GET SCP (PS3.4 Annex C.4.2–C.4.3, SPEC B3–B4).

Information models: Patient Root, Study Root and Patient/Study Only (PS3.4 §C.6.1–C.6.3),
levels and unique keys as in ``archive/retrieve.py``.

C-MOVE (§C.4.2): the Move Destination is looked up in the AE registry (A801 when unknown,
disabled or not a destination); the calling AE needs ``allow_retrieve`` (0124 otherwise). One
outgoing association per C-MOVE proposes, for every SOP class to send, the stored transfer
syntaxes and Explicit/Implicit VR Little Endian (then the lossless syntaxes we can encode, room
permitting), each in a context of its own (at most 128, PS3.8 §9.3.2.2) so the acceptor's
answer tells exactly what it takes. Each instance then goes
as stored, byte for byte, when its syntax was accepted, else transcoded (archive/transcode.py).
C-GET (§C.4.3): the sub-operations go back over the requestor's own association on the
storage contexts it proposed with SCP/SCU role selection (PS3.7 §D.3.3.4).

Responses: Pending (FF00) with Remaining/Completed/Failed/Warning counts, sent at most every
``PENDING_INTERVAL`` seconds (they are optional, §C.4.2.3.1); Cancel (FE00) when a C-CANCEL
arrived, after the sub-operation in progress; Success 0000; Warning B000 when some
sub-operations failed or warned and the others were sent, with the Failed SOP Instance UID
List (0008,0058); A702 when all failed; A701 when the matches cannot be counted; A900 when the
identifier does not fit the model; C000 on an unexpected error.

Why the service loop is ours: pynetdicom's Q/R service class (3.0.4) only sends sub-operations
it can decode into a Dataset and re-encode, and counts only what it sent itself, so neither
byte-identical sending nor transcoding per accepted context nor a lean sender fit into its
handler protocol. ``install()`` wraps ``QueryRetrieveServiceClass._move_scp/_get_scp`` so that
when the handler bound to EVT_C_MOVE/EVT_C_GET belongs to a ``RetrieveSCP``, our loop serves
the request (every other AE in the process keeps pynetdicom's behaviour). Measured: see
bench/README.md and docs/conformance.md.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pynetdicom import _config, evt
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import decode, encode
from pynetdicom.events import Event
from pynetdicom.service_class import QueryRetrieveServiceClass

from pacsbox.archive.audit import AuditLog
from pacsbox.archive.retrieve import (
    RetrieveItem,
    RetrieveSelection,
    SelectionError,
    request_from_identifier,
)
from pacsbox.archive.storage import encode_file_meta
from pacsbox.archive.transcode import (
    LOSSLESS_TARGETS,
    TranscodeError,
    can_encode,
    dataset_offset,
    plan_transfer,
    transcode,
)
from pacsbox.dicom.contexts import QR_GET_SOP_CLASSES, QR_MOVE_SOP_CLASSES
from pacsbox.dicom.storage_requestor import (
    AssociationFailed,
    PeerAborted,
    StorageRequestor,
    encode_store_rq,
)

if TYPE_CHECKING:
    from pacsbox.app import Archive

log = logging.getLogger("pacsbox.dicom.retrieve")

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
#: Seconds between Pending responses (0 = one after every sub-operation).
PENDING_INTERVAL = 0.05
MAX_SUBOPERATIONS = 65535  # the Number of ... Sub-operations elements are US
MAX_CONTEXTS = 128

LEVELS_BY_MODEL = {
    "PATIENT": ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    "STUDY": ("STUDY", "SERIES", "IMAGE"),
    "PATIENT_STUDY_ONLY": ("PATIENT", "STUDY"),
}
SUCCESS, PENDING, CANCEL, WARNING = 0x0000, 0xFF00, 0xFE00, 0xB000
NOT_AUTHORIZED = 0x0124  # PS3.7 §C.5.x general "Refused: Not Authorized"
OUT_OF_RESOURCES_MATCHES = 0xA701
OUT_OF_RESOURCES_SUBOPS = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_MISMATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000


@dataclass
class Counts:
    """Sub-operation bookkeeping (PS3.4 §C.4.2.1.5 / §C.4.3.1.4)."""

    total: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.completed - self.failed - self.warning)

    def fail(self, uid: str) -> None:
        self.failed += 1
        self.failed_uids.append(uid)

    def record(self, uid: str, status: int) -> None:
        if status == SUCCESS:
            self.completed += 1
        elif status & 0xF000 == 0xB000:  # B000, B006, B007: stored with a warning
            self.warning += 1
        else:
            self.fail(uid)


class _Operation:
    """One C-MOVE or C-GET request being served on the requestor's association."""

    def __init__(self, service: QueryRetrieveServiceClass, req: Any, context: Any) -> None:
        self.service = service
        self.req = req
        self.cx_id = int(context.context_id)
        self.ts = context.transfer_syntax[0]
        self.abstract = str(context.abstract_syntax)
        self.kind = "C-MOVE" if isinstance(req, C_MOVE) else "C-GET"
        self.final_sent = False
        self.last_pending = 0.0
        self.request: Any = None  # the RetrieveRequest, once the identifier was understood
        self.destination = ""

    @property
    def calling_ae(self) -> str:
        return str(self.service.assoc.requestor.ae_title).strip()

    def identifier(self) -> Dataset:
        return decode(
            self.req.Identifier,
            self.ts.is_implicit_VR,
            self.ts.is_little_endian,
            self.ts.is_deflated,
        )

    def respond(
        self, status: int, counts: Counts | None = None, comment: str = "", final: bool = True
    ) -> None:
        rsp = C_MOVE() if self.kind == "C-MOVE" else C_GET()
        rsp.MessageIDBeingRespondedTo = self.req.MessageID
        rsp.AffectedSOPClassUID = self.req.AffectedSOPClassUID
        rsp.Status = status
        if counts is not None:
            if status in (PENDING, CANCEL):
                rsp.NumberOfRemainingSuboperations = counts.remaining
            rsp.NumberOfCompletedSuboperations = counts.completed
            rsp.NumberOfFailedSuboperations = counts.failed
            rsp.NumberOfWarningSuboperations = counts.warning
            if status not in (SUCCESS, PENDING) and counts.failed_uids:
                ds = Dataset()
                ds.FailedSOPInstanceUIDList = counts.failed_uids
                rsp.Identifier = BytesIO(
                    encode(
                        ds, self.ts.is_implicit_VR, self.ts.is_little_endian, self.ts.is_deflated
                    )
                )
        if comment:
            rsp.ErrorComment = comment.replace("\\", "/")[:64]
        self.service.dimse.send_msg(rsp, self.cx_id)
        if final:
            self.final_sent = True

    def pending(self, counts: Counts, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_pending >= PENDING_INTERVAL:
            self.last_pending = now
            self.respond(PENDING, counts, final=False)

    def finish(self, counts: Counts, cancelled: bool) -> None:
        if cancelled:
            self.respond(CANCEL, counts)
        elif counts.failed == 0 and counts.warning == 0:
            self.respond(SUCCESS, counts)
        elif counts.failed == counts.total:
            self.respond(OUT_OF_RESOURCES_SUBOPS, counts, "all sub-operations failed")
        else:
            self.respond(WARNING, counts)

    def cancelled(self) -> bool:
        return bool(self.service.is_cancelled(self.req.MessageID))

    @property
    def requestor_alive(self) -> bool:
        return bool(self.service.assoc.is_established)


class NotSent(Exception):
    """A stored instance could not be offered to the destination (message: why)."""


def connect_destination(
    settings: Any, dest: Any, sop_classes: list[tuple[str, str]]
) -> tuple[StorageRequestor, dict[str, dict[str, int]]]:
    """An association to ``dest`` (an AE registry entry) proposing contexts for the stored
    (SOP class, transfer syntax) pairs (PS3.4 §C.4.2.3.1 sub-operations, or a forward), and
    the accepted contexts as SOP class → {transfer syntax: context id}. Raises
    ``AssociationFailed``, ``OSError`` or ``ssl.SSLError``."""
    requestor = StorageRequestor(
        dest.host,
        dest.port,
        dest.ae_title,
        settings.ae_title,
        propose_contexts(sop_classes),
        tls=client_tls_context(settings) if dest.tls else None,
        timeout=settings.dimse_timeout,
        connect_timeout=settings.acse_timeout,
    )
    accepted = requestor.associate()
    by_class: dict[str, dict[str, int]] = defaultdict(dict)
    for cx in accepted:
        by_class[cx.abstract_syntax].setdefault(cx.transfer_syntax, cx.context_id)
    return requestor, by_class


def send_stored(
    requestor: StorageRequestor,
    by_class: dict[str, dict[str, int]],
    item: RetrieveItem,
    message_id: int,
    originator_ae: str | None = None,
    originator_id: int | None = None,
) -> Any:
    """One C-STORE of a stored instance (PS3.4 §B.2): the file's data set as stored when the
    destination accepted its transfer syntax, else transcoded (archive/transcode.py).
    Returns the StoreResult; raises :class:`NotSent` when it could not be attempted (class not
    accepted, file unreadable, transcoding failed) and ``PeerAborted`` when the association
    is lost."""
    accepted = by_class.get(item.sop_class_uid, {})
    if not accepted:
        raise NotSent("SOP class not accepted by the destination")
    plan = plan_transfer(item.transfer_syntax_uid, list(accepted))
    command = encode_store_rq(
        message_id,
        item.sop_class_uid,
        item.sop_instance_uid,
        originator_ae=originator_ae,
        originator_id=originator_id,
    )
    if plan.as_stored:
        try:
            fh = open(item.path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise NotSent(f"unreadable: {exc}") from exc
        with fh:
            try:
                offset = dataset_offset(fh)
                length = os.fstat(fh.fileno()).st_size - offset
            except OSError as exc:
                raise NotSent(f"unreadable: {exc}") from exc
            cx = accepted[item.transfer_syntax_uid]
            try:
                return requestor.store_file(cx, command, fh, offset, length)
            except OSError as exc:  # the file broke while we sent it: association lost
                raise PeerAborted(f"reading {item.path.name}: {exc}") from exc
    try:
        target, data = transcode(item.path, item.transfer_syntax_uid, plan.targets)
    except TranscodeError as exc:
        raise NotSent(str(exc)) from exc
    return requestor.store_bytes(accepted[target], command, data)


class RetrieveSCP:
    """Binds C-MOVE/C-GET requests to the archive's instances and the AE registry."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.audit = AuditLog(archive.engine)
        install()

    def handlers(self) -> list[tuple[Any, Any]]:
        return [(evt.EVT_C_MOVE, self.handle_move), (evt.EVT_C_GET, self.handle_get)]

    # These are what pynetdicom sees bound; install() routes the requests to serve(). They
    # only run if pynetdicom's own loop is used after all, and then refuse clearly.
    def handle_move(self, event: Event) -> Iterator[Any]:
        yield None, None  # pynetdicom answers A801

    def handle_get(self, event: Event) -> Iterator[Any]:
        yield 1
        yield UNABLE_TO_PROCESS, None  # pynetdicom answers C000 with the failed count

    # -- the shared front part ----------------------------------------------------------
    def serve(self, op: _Operation) -> None:
        started = time.monotonic()
        try:
            counts = self._serve(op)
        except Exception as exc:  # a bug or a lost database: answer, never hang the peer
            log.exception("%s from %s failed", op.kind, op.calling_ae)
            if not op.final_sent and op.requestor_alive:
                op.respond(UNABLE_TO_PROCESS, None, f"{type(exc).__name__}: {exc}")
            return
        if counts is not None and counts.total:
            self._audit(op, counts)
        if counts is not None and counts.total:
            took = max(time.monotonic() - started, 1e-6)
            log.info(
                "%s for %s: %d completed, %d failed, %d warning of %d in %.2fs (%.0f/s)",
                op.kind,
                op.calling_ae,
                counts.completed,
                counts.failed,
                counts.warning,
                counts.total,
                took,
                (counts.completed + counts.warning) / took,
            )

    def _audit(self, op: _Operation, counts: Counts) -> None:
        """One ``export`` (C-MOVE, with the destination) or ``read`` (C-GET) event per study
        named in the request (PS3.15 A.5.3.2 "Begin Transferring DICOM Instances"), with the
        sub-operation counts of the whole request; one event naming the patient when a
        Patient-level request names no study. Written after the final response."""
        request = op.request
        studies = list(request.study_uids) if request is not None else []
        action = "export" if op.kind == "C-MOVE" else "read"
        to = f" to {op.destination}" if op.destination else ""
        detail = (
            f"{op.kind}{to} ({request.level if request else '?'} level): "
            f"{counts.completed} completed, {counts.warning} warning, {counts.failed} failed "
            f"of {counts.total}"
        )
        outcome = "success" if counts.completed + counts.warning else "failure"
        try:
            address = str(self.requestor_address(op))
        except Exception:
            address = ""
        common = dict(user=f"AE:{op.calling_ae}", client=address, outcome=outcome, detail=detail)
        if not studies:
            pid = getattr(request, "patient_id", None) or ""
            self.audit.record(action, object=f"patient:{pid}"[:255], **common)
        for study in studies[:100]:
            self.audit.record(action, study_uid=study, object=op.destination, **common)

    @staticmethod
    def requestor_address(op: _Operation) -> str:
        return str(op.service.assoc.requestor.address or "")

    def _serve(self, op: _Operation) -> Counts | None:
        registry = self.archive.registry
        caller = registry.get(op.calling_ae)
        if caller is None or not caller.allow_retrieve or not caller.enabled:
            op.respond(NOT_AUTHORIZED, None, f"{op.calling_ae} may not retrieve")
            return None
        models = QR_MOVE_SOP_CLASSES if op.kind == "C-MOVE" else QR_GET_SOP_CLASSES
        levels = LEVELS_BY_MODEL[models.get(op.abstract, "STUDY")]
        try:
            identifier = op.identifier()
            request = request_from_identifier(identifier, levels)
        except SelectionError as exc:
            op.respond(IDENTIFIER_MISMATCH, None, str(exc))
            return None
        except Exception as exc:
            op.respond(IDENTIFIER_MISMATCH, None, f"cannot decode the identifier: {exc}")
            return None
        op.request = request
        destination = None
        if op.kind == "C-MOVE":
            title = str(op.req.MoveDestination or "").strip()
            op.destination = title
            destination = registry.get(title) if title else None
            if destination is None or not destination.enabled or not destination.is_destination:
                why = "unknown" if destination is None else "not an enabled destination"
                op.respond(MOVE_DESTINATION_UNKNOWN, None, f"move destination {title!r} {why}")
                return None
        selection = RetrieveSelection(self.archive.engine, self.archive.store.root, request)
        try:
            total = selection.count()
        except Exception as exc:
            log.warning("%s: cannot count matches: %s", op.kind, exc)
            op.respond(OUT_OF_RESOURCES_MATCHES, None, "cannot calculate the number of matches")
            return None
        counts = Counts(total)
        if total == 0:
            op.respond(SUCCESS, counts)
            return counts
        if total > MAX_SUBOPERATIONS:
            op.respond(
                OUT_OF_RESOURCES_MATCHES, None, f"{total} matches; at most 65535 per request"
            )
            return None
        if destination is not None:
            return self._move(op, selection, counts, destination)
        return self._get(op, selection, counts)

    # -- C-MOVE ---------------------------------------------------------------------------
    def _move(
        self, op: _Operation, selection: RetrieveSelection, counts: Counts, dest: Any
    ) -> Counts:
        sop_classes = selection.sop_classes()
        try:
            requestor, by_class = connect_destination(self.archive.settings, dest, sop_classes)
        except (AssociationFailed, OSError, ssl.SSLError) as exc:
            log.warning("C-MOVE to %s: %s", dest.ae_title, exc)
            counts.failed = counts.total
            op.respond(OUT_OF_RESOURCES_SUBOPS, counts, str(exc))
            return counts
        log.info(
            "C-MOVE from %s to %s@%s:%s: %d instances, %d contexts accepted for %d stored pairs",
            op.calling_ae,
            dest.ae_title,
            dest.host,
            dest.port,
            counts.total,
            sum(len(v) for v in by_class.values()),
            len(sop_classes),
        )
        message_id = 0
        cancelled = broken = False
        op.pending(counts, force=True)
        try:
            for item in selection.iter():
                if broken:  # the destination went away: the rest fail, listed by UID
                    counts.fail(item.sop_instance_uid)
                    continue
                if op.cancelled():
                    cancelled = True
                    break
                if not op.requestor_alive:
                    requestor.abort()
                    return counts
                message_id = message_id % 65535 + 1
                try:
                    status = self._send_one(requestor, by_class, item, message_id, op)
                except PeerAborted as exc:
                    log.warning("C-MOVE to %s ended: %s", dest.ae_title, exc)
                    requestor.abort()
                    broken = True
                    status = None
                if status is None:
                    counts.fail(item.sop_instance_uid)
                else:
                    counts.record(item.sop_instance_uid, status)
                if counts.remaining:
                    op.pending(counts)
        finally:
            requestor.release()
        if op.requestor_alive:
            op.finish(counts, cancelled)
        return counts

    def _send_one(
        self,
        requestor: StorageRequestor,
        by_class: dict[str, dict[str, int]],
        item: RetrieveItem,
        message_id: int,
        op: _Operation,
    ) -> int | None:
        """One C-STORE sub-operation; None when it could not be attempted."""
        try:
            result = send_stored(
                requestor,
                by_class,
                item,
                message_id,
                originator_ae=op.calling_ae,
                originator_id=int(op.req.MessageID),
            )
        except NotSent as exc:
            log.warning("C-MOVE: cannot send %s: %s", item.sop_instance_uid, exc)
            return None
        if result.status != SUCCESS:
            log.info(
                "C-MOVE: %s answered %#06x for %s %s",
                requestor.called_ae,
                result.status,
                item.sop_instance_uid,
                result.comment,
            )
        return result.status

    # -- C-GET ----------------------------------------------------------------------------
    def _get(self, op: _Operation, selection: RetrieveSelection, counts: Counts) -> Counts:
        assoc = op.service.assoc
        by_class: dict[str, list[str]] = defaultdict(list)
        for cx in assoc.accepted_contexts:
            if cx.as_scu:  # the requestor proposed the SCP role for it (PS3.7 §D.3.3.4)
                by_class[str(cx.abstract_syntax)].append(str(cx.transfer_syntax[0]))
        _config.STORE_SEND_CHUNKED_DATASET = True  # send files by path without decoding
        cancelled = False
        message_id = int(op.req.MessageID)
        op.pending(counts, force=True)
        for item in selection.iter():
            if op.cancelled():
                cancelled = True
                break
            if not op.requestor_alive:
                return counts
            message_id = message_id % 65535 + 1
            status = self._get_one(assoc, by_class.get(item.sop_class_uid, []), item, message_id)
            if not op.requestor_alive:
                return counts
            if status is None:
                counts.fail(item.sop_instance_uid)
            else:
                counts.record(item.sop_instance_uid, status)
            if counts.remaining:
                op.pending(counts)
        op.finish(counts, cancelled)
        return counts

    def _get_one(
        self, assoc: Any, accepted: list[str], item: RetrieveItem, message_id: int
    ) -> int | None:
        plan = plan_transfer(item.transfer_syntax_uid, accepted)
        if not plan.possible:
            log.warning(
                "C-GET: no storage context with SCP role for %s in %s",
                item.sop_instance_uid,
                item.transfer_syntax_uid,
            )
            return None
        tmp: Path | None = None
        try:
            if plan.as_stored and item.storage_format == "part10":
                path = item.path
                if not path.is_file():
                    log.warning("C-GET: %s: file missing", item.sop_instance_uid)
                    return None
            else:
                if plan.as_stored:
                    with open(item.path, "rb") as fh:
                        fh.seek(dataset_offset(fh))
                        ts, data = item.transfer_syntax_uid, fh.read()
                else:
                    ts, data = transcode(item.path, item.transfer_syntax_uid, plan.targets)
                tmp = _write_part10(item, ts, data)
                path = tmp
            rsp = assoc.send_c_store(path, msg_id=message_id)
        except (OSError, TranscodeError, ValueError, AttributeError) as exc:
            log.warning("C-GET: cannot send %s: %s", item.sop_instance_uid, exc)
            return None
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        return int(rsp.Status) if "Status" in rsp else None


def _write_part10(item: RetrieveItem, ts: str, data: bytes) -> Path:
    fd, name = tempfile.mkstemp(prefix="pacsbox-get-", suffix=".dcm")
    with os.fdopen(fd, "wb") as out:
        out.write(encode_file_meta(item.sop_class_uid, item.sop_instance_uid, ts))
        out.write(data)
    return Path(name)


def propose_contexts(pairs: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Presentation contexts for a C-MOVE sub-association (SPEC B4).

    For each SOP class: every stored transfer syntax, then Explicit and Implicit VR LE, one
    syntax per context so the acceptor's answer tells exactly which it takes; then, if the
    total stays within 128 (PS3.8 §9.3.2.2), the lossless syntaxes we can encode (JPEG-LS,
    RLE, JPEG 2000), for peers that take only compressed data. Over 128 single-syntax
    contexts, one context per SOP class lists them all (the acceptor picks one); SOP classes
    beyond 128 are left out and their instances fail.
    """
    stored: dict[str, list[str]] = defaultdict(list)
    for sop_class, ts in pairs:
        if ts not in stored[sop_class]:
            stored[sop_class].append(ts)
    per_class: dict[str, list[str]] = {}
    extra: dict[str, list[str]] = {}
    lossless = [ts for ts in LOSSLESS_TARGETS if can_encode(ts)]
    for sop_class, syntaxes in stored.items():
        order = list(syntaxes)
        for ts in (EXPLICIT_LE, IMPLICIT_LE):
            if ts not in order:
                order.append(ts)
        per_class[sop_class] = order
        extra[sop_class] = [ts for ts in lossless if ts not in order]
    single = [(sc, [ts]) for sc, order in per_class.items() for ts in order]
    with_extra = single + [(sc, [ts]) for sc, more in extra.items() for ts in more]
    if len(with_extra) <= MAX_CONTEXTS:
        return with_extra
    if len(single) <= MAX_CONTEXTS:
        return single
    grouped = [(sc, order) for sc, order in per_class.items()]
    if len(grouped) > MAX_CONTEXTS:
        log.warning("C-MOVE: %d SOP classes; only 128 can be proposed", len(grouped))
    return grouped[:MAX_CONTEXTS]


def client_tls_context(settings: Any) -> ssl.SSLContext:
    """TLS client context for outgoing associations (PS3.15 Annex B.1).

    The peer's certificate is verified against ``tls_ca`` (else the system store); host names
    are not checked (DICOM nodes are addressed by IP as often as by name); our ``tls_cert`` /
    ``tls_key`` are presented for mutual TLS when set.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if settings.tls_ca:
        ctx.load_verify_locations(str(settings.tls_ca))
    else:
        ctx.load_default_certs()
    if settings.tls_cert and settings.tls_key:
        ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return ctx


# -- routing pynetdicom's Q/R service class to RetrieveSCP ----------------------------------
_ORIGINAL: dict[str, Callable[..., None]] = {}


def _bound_retrieve_scp(assoc: Any, event: Any) -> RetrieveSCP | None:
    bound = assoc.get_handlers(event)
    handler = bound[0] if isinstance(bound, tuple) and bound else None
    owner = getattr(handler, "__self__", None)
    return owner if isinstance(owner, RetrieveSCP) else None


def _move_scp(self: QueryRetrieveServiceClass, req: C_MOVE, context: Any) -> None:
    scp = _bound_retrieve_scp(self.assoc, evt.EVT_C_MOVE)
    if scp is None:
        return _ORIGINAL["move"](self, req, context)
    scp.serve(_Operation(self, req, context))
    return None


def _get_scp(self: QueryRetrieveServiceClass, req: C_GET, context: Any) -> None:
    scp = _bound_retrieve_scp(self.assoc, evt.EVT_C_GET)
    if scp is None:
        return _ORIGINAL["get"](self, req, context)
    scp.serve(_Operation(self, req, context))
    return None


def install() -> None:
    """Route C-MOVE/C-GET requests whose bound handler is a RetrieveSCP to our loop."""
    if _ORIGINAL:
        return
    _ORIGINAL["move"] = QueryRetrieveServiceClass._move_scp
    _ORIGINAL["get"] = QueryRetrieveServiceClass._get_scp
    QueryRetrieveServiceClass._move_scp = _move_scp  # type: ignore[method-assign]
    QueryRetrieveServiceClass._get_scp = _get_scp  # type: ignore[method-assign]
