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
