"""DICOM SCU operations: C-ECHO (PS3.7 §9.1.5) and C-STORE of files (PS3.7 §9.1.1).

Used by ``pacsbox echo`` (SPEC D1) and by ``sendtopacs send`` (SPEC S3: DICOM files sent as
they are). Every socket we open gets TCP_NODELAY.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from pacsbox import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


class SCUError(Exception):
    """The remote AE could not be reached or refused the association."""


@dataclass
class SendReport:
    sent: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def _ae(calling: str) -> AE:
    ae = AE(ae_title=calling)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.maximum_pdu_size = 1_048_576
    return ae


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _associate(
    ae: AE, host: str, port: int, called: str, tls: ssl.SSLContext | None, contexts: list
) -> object:
    ae.requested_contexts = contexts
    tls_args = (tls, host) if tls is not None else None
    assoc = ae.associate(host, port, ae_title=called, tls_args=tls_args)
    if not assoc.is_established:
        if assoc.is_rejected:
            raise SCUError(f"{called}@{host}:{port} rejected the association")
        raise SCUError(f"{called}@{host}:{port} did not accept an association")
    if assoc.dul.socket and assoc.dul.socket.socket:
        _nodelay(assoc.dul.socket.socket)
    return assoc


def echo(
    host: str, port: int, called: str, calling: str = "PACSBOX", tls: ssl.SSLContext | None = None
) -> int:
    """C-ECHO; returns the status (0 = success), raises SCUError when unreachable."""
    ae = _ae(calling)
    assoc = _associate(ae, host, port, called, tls, [build_context(Verification)])
    try:
        rsp = assoc.send_c_echo()  # type: ignore[attr-defined]
        if "Status" not in rsp:
            raise SCUError("no C-ECHO response (timeout or abort)")
        return int(rsp.Status)
    finally:
        assoc.release()  # type: ignore[attr-defined]


def send_files(
    paths: Sequence[Path],
    host: str,
    port: int,
    called: str,
    calling: str = "SENDTOPACS",
    tls: ssl.SSLContext | None = None,
    progress: Callable[[Path, int | None], None] | None = None,
) -> SendReport:
    """C-STORE each file as it is (its own SOP class and transfer syntax) on one association."""
    report = SendReport()
    metas: list[tuple[Path, str, str]] = []
    for path in paths:
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            ts = str(ds.file_meta.TransferSyntaxUID)
            metas.append((path, str(ds.SOPClassUID), ts))
        except Exception as exc:
            report.failed.append((str(path), f"not a DICOM file: {exc}"))
    # One context per (SOP class, transfer syntax): an acceptor picks one syntax per context.
    pairs = sorted({(sop_class, ts) for _, sop_class, ts in metas})
    if len(pairs) > 128:  # PS3.8: at most 128 presentation contexts per association
        raise SCUError("more than 128 SOP class/transfer syntax pairs in one send; split it")
    contexts = [build_context(sc, ts) for sc, ts in pairs]
    if not metas:
        return report
    ae = _ae(calling)
    assoc = _associate(ae, host, port, called, tls, contexts)
    # Send the data set bytes exactly as they are in the file (no decode/re-encode).
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        for path, _sc, _ts in metas:
            try:
                rsp = assoc.send_c_store(path)  # type: ignore[attr-defined]
                code = int(rsp.Status) if "Status" in rsp else None
            except Exception as exc:
                report.failed.append((str(path), str(exc)))
                code = None
            else:
                if code == 0 or (code is not None and code & 0xF000 == 0xB000):
                    report.sent.append(str(path))
                else:
                    comment = str(rsp.get("ErrorComment", "")) if code is not None else "timeout"
                    report.failed.append(
                        (
                            str(path),
                            f"status {code:#06x} {comment}".strip()
                            if code is not None
                            else "no response",
                        )
                    )
            if progress:
                progress(path, code)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()  # type: ignore[attr-defined]
    return report


#: C-FIND SOP classes by model name (PS3.4 §C.6).
FIND_MODELS = {
    "patient": "1.2.840.10008.5.1.4.1.2.1.1",
    "study": "1.2.840.10008.5.1.4.1.2.2.1",
    "patient-study": "1.2.840.10008.5.1.4.1.2.3.1",
}


@dataclass
class FindResult:
    matches: list = field(default_factory=list)  #: the pending responses' identifiers
    status: int | None = None  #: the final status (None: no response)
    comment: str = ""


def parse_key(text: str) -> tuple[int, str]:
    """``Keyword=Value``, ``(gggg,eeee)=Value`` or ``ggggeeee=Value`` → (tag, value)."""
    from pydicom.datadict import tag_for_keyword

    name, _, value = text.partition("=")
    name = name.strip()
    tag = tag_for_keyword(name)
    if tag is None:
        hexpart = name.strip("()").replace(",", "")
        try:
            tag = int(hexpart, 16) if len(hexpart) == 8 else None
        except ValueError:
            tag = None
    if tag is None:
        raise SCUError(f"unknown attribute {name!r} (use a keyword or (gggg,eeee))")
    return int(tag), value


def find(
    host: str,
    port: int,
    called: str,
    keys: Sequence[tuple[int, str]],
    *,
    model: str = "study",
    level: str = "STUDY",
    calling: str = "PACSBOX",
    tls: ssl.SSLContext | None = None,
) -> FindResult:
    """C-FIND (PS3.7 §9.1.2, PS3.4 Annex C) with an identifier built from (tag, value) keys;
    a value with non-ASCII characters makes the identifier ISO_IR 192 (UTF-8)."""
    from pydicom.datadict import dictionary_VR
    from pydicom.dataset import Dataset

    if model not in FIND_MODELS:
        raise SCUError(f"model must be one of {', '.join(FIND_MODELS)}")
    ds = Dataset()
    if any(not v.isascii() for _, v in keys):
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level.upper()
    for tag, value in keys:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "LO"
        if vr == "SQ":
            ds.add_new(tag, vr, [])
        else:
            ds.add_new(tag, vr, value or None)
    sop_class = FIND_MODELS[model]
    ae = _ae(calling)
    assoc = _associate(ae, host, port, called, tls, [build_context(sop_class)])
    result = FindResult()
    try:
        for status, identifier in assoc.send_c_find(ds, sop_class):  # type: ignore[attr-defined]
            if "Status" not in status:
                break
            code = int(status.Status)
            if code in (0xFF00, 0xFF01) and identifier is not None:
                result.matches.append(identifier)
                continue
            result.status = code
            result.comment = str(status.get("ErrorComment", "") or "")
    finally:
        assoc.release()  # type: ignore[attr-defined]
    return result


# -- C-MOVE / C-GET SCU (PS3.4 §C.4.2, §C.4.3; SPEC D2) -------------------------------------
#: Query/Retrieve information models by name → (MOVE, GET) SOP Class UIDs (PS3.4 §C.6).
QR_MODELS: dict[str, tuple[str, str]] = {
    "patient": ("1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.1.3"),
    "study": ("1.2.840.10008.5.1.4.1.2.2.2", "1.2.840.10008.5.1.4.1.2.2.3"),
    "patient-study": ("1.2.840.10008.5.1.4.1.2.3.2", "1.2.840.10008.5.1.4.1.2.3.3"),
}


@dataclass
class RetrieveReport:
    """What a C-MOVE / C-GET ended with (PS3.4 §C.4.2.1.5 / §C.4.3.1.4)."""

    status: int | None = None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int | None = None
    failed_uids: list[str] = field(default_factory=list)
    comment: str = ""
    responses: int = 0
    saved: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 0

    def as_dict(self) -> dict[str, object]:
        return {
            "status": None if self.status is None else f"{self.status:04X}",
            "completed": self.completed,
            "failed": self.failed,
            "warning": self.warning,
            "remaining": self.remaining,
            "failed_sop_instance_uids": self.failed_uids,
            "comment": self.comment,
            "saved": len(self.saved),
        }


def retrieve_identifier(
    level: str,
    patient_id: str | None = None,
    study_uids: Sequence[str] = (),
    series_uids: Sequence[str] = (),
    sop_uids: Sequence[str] = (),
) -> object:
    """A retrieve identifier (PS3.4 §C.4.2.1.4): the level plus the unique keys given."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = level
    if patient_id is not None:
        ds.PatientID = patient_id
    if study_uids:
        ds.StudyInstanceUID = list(study_uids) if len(study_uids) > 1 else study_uids[0]
    if series_uids:
        ds.SeriesInstanceUID = list(series_uids) if len(series_uids) > 1 else series_uids[0]
    if sop_uids:
        ds.SOPInstanceUID = list(sop_uids) if len(sop_uids) > 1 else sop_uids[0]
    return ds


def _take_response(report: RetrieveReport, status: object, identifier: object) -> None:
    if status is None or "Status" not in status:  # type: ignore[operator]
        return
    report.responses += 1
    report.status = int(status.Status)  # type: ignore[attr-defined]
    for keyword, attr in (
        ("NumberOfCompletedSuboperations", "completed"),
        ("NumberOfFailedSuboperations", "failed"),
        ("NumberOfWarningSuboperations", "warning"),
    ):
        value = status.get(keyword)  # type: ignore[attr-defined]
        if value is not None:
            setattr(report, attr, int(value))
    remaining = status.get("NumberOfRemainingSuboperations")  # type: ignore[attr-defined]
    report.remaining = int(remaining) if remaining is not None else None
    comment = status.get("ErrorComment")  # type: ignore[attr-defined]
    if comment:
        report.comment = str(comment)
    if identifier is not None and "FailedSOPInstanceUIDList" in identifier:  # type: ignore[operator]
        value = identifier.FailedSOPInstanceUIDList  # type: ignore[attr-defined]
        uids = [value] if isinstance(value, str) else list(value)
        report.failed_uids = [str(u) for u in uids if u]


def move(
    host: str,
    port: int,
    called: str,
    destination: str,
    identifier: object,
    *,
    model: str = "study",
    calling: str = "PACSBOX",
    tls: ssl.SSLContext | None = None,
    progress: Callable[[RetrieveReport], None] | None = None,
) -> RetrieveReport:
    """C-MOVE ``identifier`` from ``called`` to the AE ``destination`` (PS3.4 §C.4.2)."""
    from pynetdicom.presentation import build_context as _build

    sop_class = QR_MODELS[model][0]
    ae = _ae(calling)
    ae.dimse_timeout = None  # a large move may take long between responses
    assoc = _associate(ae, host, port, called, tls, [_build(sop_class)])
    report = RetrieveReport()
    try:
        for status, ident in assoc.send_c_move(identifier, destination, sop_class):  # type: ignore[attr-defined]
            _take_response(report, status, ident)
            if progress:
                progress(report)
    finally:
        assoc.release()  # type: ignore[attr-defined]
    if report.status is None:
        raise SCUError("no C-MOVE response (time-out or abort)")
    return report


def get(
    host: str,
    port: int,
    called: str,
    folder: Path,
    identifier: object,
    *,
    model: str = "study",
    calling: str = "PACSBOX",
    tls: ssl.SSLContext | None = None,
    progress: Callable[[RetrieveReport], None] | None = None,
) -> RetrieveReport:
    """C-GET ``identifier`` into ``folder`` (PS3.4 §C.4.3), one ``<SOP Instance UID>.dcm``
    per instance as received (file meta + the data set bytes the peer sent).

    Proposes the Get model plus 127 common storage SOP classes with SCP role selection
    (PS3.7 §D.3.3.4); each storage context lists Explicit/Implicit VR LE first, then the
    compressed syntaxes, so the peer may send compressed data as stored only if it prefers to.
    """
    from pynetdicom import evt
    from pynetdicom.presentation import StoragePresentationContexts, build_role
    from pynetdicom.presentation import build_context as _build

    from pacsbox.dicom.contexts import RECEIVE_TRANSFER_SYNTAXES

    sop_class = QR_MODELS[model][1]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # everything we can store except the video syntaxes (keeps the A-ASSOCIATE-RQ small)
    syntaxes = [
        ts for ts in RECEIVE_TRANSFER_SYNTAXES if not ts.startswith("1.2.840.10008.1.2.4.10")
    ]
    contexts = [_build(sop_class)]
    roles = []
    for cx in StoragePresentationContexts[:127]:
        contexts.append(_build(cx.abstract_syntax, syntaxes))
        roles.append(build_role(cx.abstract_syntax, scp_role=True))
    report = RetrieveReport()

    def on_store(event: object) -> int:
        try:
            sop_uid = str(event.request.AffectedSOPInstanceUID)  # type: ignore[attr-defined]
            from pacsbox.archive.storage import check_uid

            check_uid(sop_uid)
            target = folder / f"{sop_uid}.dcm"
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(event.encoded_dataset(include_meta=True))  # type: ignore[attr-defined]
            tmp.replace(target)
        except Exception:
            return 0xA700  # out of resources: cannot store
        report.saved.append(str(target))
        return 0x0000

    ae = _ae(calling)
    ae.dimse_timeout = None
    ae.requested_contexts = contexts
    tls_args = (tls, host) if tls is not None else None
    assoc = ae.associate(
        host,
        port,
        ae_title=called,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
        tls_args=tls_args,
    )
    if not assoc.is_established:
        raise SCUError(f"{called}@{host}:{port} did not accept the association")
    if assoc.dul.socket and assoc.dul.socket.socket:
        _nodelay(assoc.dul.socket.socket)
    try:
        for status, ident in assoc.send_c_get(identifier, sop_class):
            _take_response(report, status, ident)
            if progress:
                progress(report)
    finally:
        assoc.release()
    if report.status is None:
        raise SCUError("no C-GET response (time-out or abort)")
    return report
