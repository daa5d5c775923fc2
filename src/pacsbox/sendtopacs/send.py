"""Sending to any PACS (SPEC S5): C-ECHO per device (PS3.7 §9.1.5) and C-STORE of DICOM files
and freshly converted objects (PS3.7 §9.1.1, PS3.4 Annex B) with one association per N files.

Every failure gets its own text: the association was rejected (result, source and reason from
the A-ASSOCIATE-RJ, PS3.8 §9.3.4), the connection was refused or timed out, no presentation
context was accepted for the object's SOP class / transfer syntax (PS3.8 §9.3.3.2), no
response came (time-out / abort), or the C-STORE status says why (PS3.4 §B.2.3, PS3.7
Annex C).

Transfer syntax (PS3.5 §10, PS3.4 §B.4.1): an object goes in the syntax it is in when the peer
accepted it; else, or always when the device says "decompress", its pixel data is decompressed
and it goes in Explicit (or Implicit) VR Little Endian (``pacsbox.archive.transcode``'s rules).
Video (MPEG-2 / H.264) is never decompressed: that fails with a clear error.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import _config
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from pacsbox.archive.transcode import NATIVE_SYNTAXES, UNCOMPRESSED_TARGETS, plan_transfer
from pacsbox.dicom.scu import _ae, _nodelay
from pacsbox.sendtopacs.settings import Device

_VIDEO_SYNTAX_PREFIX = "1.2.840.10008.1.2.4.10"  # .100-.108 MPEG-2 / H.264 / HEVC

#: C-STORE status meanings (PS3.4 §B.2.3 Table B.2-1, PS3.7 Annex C).
STATUS_TEXT: dict[int, str] = {
    0x0000: "success",
    0x0001: "warning: requested optional attributes are not supported",
    0x0107: "warning: attribute list error",
    0x0116: "warning: attribute value out of range",
    0xB000: "warning: coercion of data elements",
    0xB006: "warning: elements discarded",
    0xB007: "warning: data set does not match SOP class",
    0x0110: "failure: processing failure",
    0x0111: "failure: duplicate SOP instance",
    0x0112: "failure: no such SOP instance",
    0x0117: "failure: invalid SOP instance",
    0x0118: "failure: no such SOP class",
    0x0119: "failure: class-instance conflict",
    0x0122: "failure: SOP class not supported",
    0x0124: "failure: refused, not authorized",
    0x0210: "failure: duplicate invocation",
    0x0211: "failure: unrecognized operation",
    0x0212: "failure: mistyped argument",
    0x0213: "failure: resource limitation",
}


def status_text(code: int) -> str:
    if code in STATUS_TEXT:
        return STATUS_TEXT[code]
    if code & 0xFF00 == 0xA700:
        return "refused: out of resources"
    if code & 0xFF00 == 0xA900:
        return "error: data set does not match SOP class"
    if code & 0xF000 == 0xC000:
        return "error: cannot understand"
    if code & 0xF000 == 0xB000:
        return "warning"
    return "failure"


def is_success(code: int) -> bool:
    """Success or warning (the object was stored), PS3.4 §B.2.3."""
    return code == 0 or code & 0xF000 == 0xB000 or code in (0x0001, 0x0107, 0x0116)


@dataclass
class SendItem:
    """One object to send: a DICOM file (sent as it is) or a converted data set."""

    label: str
    path: Path | None = None
    dataset: Dataset | None = None
    sop_class: str = ""
    transfer_syntax: str = ""
    sop_instance_uid: str = ""

    @classmethod
    def from_file(cls, path: Path) -> SendItem:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        meta = getattr(ds, "file_meta", None)
        if not meta or "TransferSyntaxUID" not in meta or "SOPClassUID" not in ds:
            raise ValueError("not a DICOM Part-10 file (no file meta / SOP Class UID)")
        return cls(
            str(path),
            Path(path),
            None,
            str(ds.SOPClassUID),
            str(meta.TransferSyntaxUID),
            str(ds.get("SOPInstanceUID", "")),
        )

    @classmethod
    def from_dataset(cls, label: str, ds: Dataset) -> SendItem:
        return cls(
            label,
            None,
            ds,
            str(ds.SOPClassUID),
            str(ds.file_meta.TransferSyntaxUID),
            str(ds.SOPInstanceUID),
        )


@dataclass
class ItemResult:
    label: str
    sop_instance_uid: str
    ok: bool
    status: int | None = None
    message: str = ""
    transfer_syntax: str = ""  #: the syntax it went in
    association: int = 0  #: which association (1-based) carried it

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.label,
            "sop_instance_uid": self.sop_instance_uid,
            "ok": self.ok,
            "status": None if self.status is None else f"{self.status:04X}",
            "message": self.message,
            "transfer_syntax": self.transfer_syntax,
            "association": self.association,
        }


@dataclass
class SendResult:
    device: str
    results: list[ItemResult] = field(default_factory=list)
    associations: int = 0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def sent(self) -> list[ItemResult]:
        return [r for r in self.results if r.ok]

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.results if not r.ok]

    def as_dict(self) -> dict[str, object]:
        return {
            "device": self.device,
            "sent": len(self.sent),
            "failed": len(self.failed),
            "associations": self.associations,
            "files": [r.as_dict() for r in self.results],
        }


def _connect_problem(host: str, port: int, timeout: float) -> str:
    """Why a TCP connection fails, in words."""
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 10)):
            return ""
    except ConnectionRefusedError:
        return f"cannot connect to {host}:{port}: connection refused (nothing listening?)"
    except TimeoutError:
        return f"cannot connect to {host}:{port}: timed out"
    except socket.gaierror as exc:
        return f"cannot resolve host {host!r}: {exc.strerror}"
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc.strerror or exc}"


def _association_problem(assoc: object, device: Device) -> str:
    where = f"{device.ae_title}@{device.host}:{device.port}"
    if assoc.is_rejected:  # type: ignore[attr-defined]
        prim = assoc.acceptor.primitive  # type: ignore[attr-defined]
        try:
            detail = f"{prim.result_str}, {prim.source_str}: {prim.reason_str}"
        except Exception:  # pragma: no cover - defensive: malformed RJ
            detail = "no reason given"
        return f"association rejected by {where} ({detail})"
    problem = _connect_problem(device.host, device.port, device.timeout)
    if problem:
        return problem
    if assoc.is_aborted:  # type: ignore[attr-defined]
        return f"association aborted by {where} (A-ABORT or connection closed)"
    return f"no association with {where} (time-out or no A-ASSOCIATE-AC)"


def _make_ae(device: Device, calling: str) -> object:
    ae = _ae(calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = device.timeout
    ae.connection_timeout = device.timeout
    return ae


def _associate(ae: object, device: Device, contexts: list) -> object:
    """Request an association. pynetdicom sometimes sees the peer close the connection right
    after an A-ASSOCIATE-RJ before it reads the RJ (reported as an abort, ~1 in 20 against
    ``storescp --refuse``): an abort without a rejection is retried once, so the user gets
    the peer's actual reason."""
    for attempt in (1, 2):
        ae.requested_contexts = contexts  # type: ignore[attr-defined]
        assoc = ae.associate(device.host, device.port, ae_title=device.ae_title)  # type: ignore[attr-defined]
        if assoc.is_established:
            if assoc.dul.socket and assoc.dul.socket.socket:
                _nodelay(assoc.dul.socket.socket)
            return assoc
        if assoc.is_rejected or not assoc.is_aborted or attempt == 2:
            return assoc
    return assoc


def echo_device(device: Device, calling: str = "SENDTOPACS") -> tuple[bool, str]:
    """C-ECHO ``device``: (ok, message)."""
    ae = _make_ae(device, calling)
    assoc = _associate(ae, device, [build_context(Verification)])
    if not assoc.is_established:  # type: ignore[attr-defined]
        return False, _association_problem(assoc, device)
    try:
        rsp = assoc.send_c_echo()  # type: ignore[attr-defined]
        if "Status" not in rsp:
            return False, "no C-ECHO response (time-out or abort)"
        code = int(rsp.Status)
        if code == 0:
            return True, f"C-ECHO {device.ae_title}@{device.host}:{device.port}: success"
        return False, f"C-ECHO status {code:04X}"
    finally:
        if assoc.is_established:  # type: ignore[attr-defined]
            assoc.release()  # type: ignore[attr-defined]


def _contexts_for(items: Sequence[SendItem], decompress: bool) -> list:
    """One context per (SOP class, transfer syntax) of the items (an acceptor picks one syntax
    per context), plus an uncompressed context per SOP class for the decompression fallback."""
    pairs: set[tuple[str, tuple[str, ...]]] = set()
    for item in items:
        native = (*UNCOMPRESSED_TARGETS,)
        if decompress and not item.transfer_syntax.startswith(_VIDEO_SYNTAX_PREFIX):
            pairs.add((item.sop_class, native))
            continue
        pairs.add((item.sop_class, (item.transfer_syntax,)))
        video = item.transfer_syntax.startswith(_VIDEO_SYNTAX_PREFIX)
        if item.transfer_syntax != native[0] and not video:
            pairs.add((item.sop_class, native))
    return [build_context(sc, list(ts)) for sc, ts in sorted(pairs)]


def _chunks(items: Sequence[SendItem], per: int, decompress: bool) -> list[list[SendItem]]:
    """Groups of at most ``per`` items (0 = all) and at most 128 presentation contexts each
    (PS3.8 §9.3.2.2: presentation context IDs are odd numbers 1-255)."""
    out: list[list[SendItem]] = []
    current: list[SendItem] = []
    for item in items:
        trial = [*current, item]
        if current and (
            (per and len(current) >= per) or len(_contexts_for(trial, decompress)) > 128
        ):
            out.append(current)
            trial = [item]
        current = trial
    if current:
        out.append(current)
    return out


def _accepted(assoc: object) -> dict[str, list[str]]:
    acc: dict[str, list[str]] = {}
    for cx in assoc.accepted_contexts:  # type: ignore[attr-defined]
        acc.setdefault(str(cx.abstract_syntax), []).append(str(cx.transfer_syntax[0]))
    return acc


def _decompressed(item: SendItem) -> Dataset:
    ds = item.dataset.copy() if item.dataset is not None else dcmread(item.path)
    if item.transfer_syntax not in NATIVE_SYNTAXES and "PixelData" in ds:
        ds.decompress(generate_instance_uid=False)  # as_rgb: see the toolkit notes
    return ds


def _store_one(
    assoc: object, item: SendItem, accepted: dict[str, list[str]], decompress: bool
) -> tuple[int | None, str, str]:
    """(status, message, transfer syntax used) for one object."""
    syntaxes = accepted.get(item.sop_class, [])
    name = UID(item.sop_class).name
    video = item.transfer_syntax.startswith(_VIDEO_SYNTAX_PREFIX)
    if not syntaxes:
        return (
            None,
            f"the peer accepted no presentation context for {name} "
            f"(offered in {UID(item.transfer_syntax).name}"
            + (")" if video else " and uncompressed)"),
            "",
        )
    plan = plan_transfer(item.transfer_syntax, syntaxes)
    as_is = plan.as_stored and not (
        decompress and not video and item.transfer_syntax not in NATIVE_SYNTAXES
    )
    if as_is:
        payload: object = item.path if item.path is not None else item.dataset
        used = item.transfer_syntax
    else:
        targets = [ts for ts in plan.targets if ts in UNCOMPRESSED_TARGETS]
        if decompress and not targets:
            targets = [ts for ts in syntaxes if ts in UNCOMPRESSED_TARGETS]
        if video or not targets:
            offered = ", ".join(UID(t).name for t in syntaxes)
            return (
                None,
                f"no accepted transfer syntax can carry this {name} in "
                f"{UID(item.transfer_syntax).name} (the peer accepted: {offered})"
                + ("; video is never decompressed" if video else ""),
                "",
            )
        try:
            ds = _decompressed(item)
        except Exception as exc:
            return None, f"cannot decompress {UID(item.transfer_syntax).name}: {exc}", ""
        used = targets[0]
        ds.file_meta.TransferSyntaxUID = UID(used)
        payload = ds
    try:
        rsp = assoc.send_c_store(payload)  # type: ignore[attr-defined]
    except Exception as exc:
        return None, f"C-STORE failed: {exc}", used
    if "Status" not in rsp:
        return None, "no C-STORE response (time-out or association aborted)", used
    code = int(rsp.Status)
    comment = str(rsp.get("ErrorComment", "") or "")
    message = f"{code:04X} {status_text(code)}" + (f" ({comment})" if comment else "")
    return code, message, used


def send_items(
    items: Sequence[SendItem],
    device: Device,
    calling: str = "SENDTOPACS",
    progress: Callable[[ItemResult], None] | None = None,
) -> SendResult:
    """C-STORE ``items`` to ``device``: one association per ``files_per_association`` items."""
    result = SendResult(device.name)
    ae = _make_ae(device, calling)
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        for chunk in _chunks(items, device.files_per_association, device.decompress):
            assoc = _associate(ae, device, _contexts_for(chunk, device.decompress))
            if not assoc.is_established:  # type: ignore[attr-defined]
                problem = _association_problem(assoc, device)
                for item in chunk:
                    res = ItemResult(item.label, item.sop_instance_uid, False, None, problem)
                    result.results.append(res)
                    if progress:
                        progress(res)
                continue
            result.associations += 1
            accepted = _accepted(assoc)
            try:
                for item in chunk:
                    if not assoc.is_established:  # type: ignore[attr-defined]
                        code, message, used = None, "association lost before this file", ""
                    else:
                        code, message, used = _store_one(assoc, item, accepted, device.decompress)
                    res = ItemResult(
                        item.label,
                        item.sop_instance_uid,
                        code is not None and is_success(code),
                        code,
                        message,
                        used,
                        result.associations,
                    )
                    result.results.append(res)
                    if progress:
                        progress(res)
            finally:
                if assoc.is_established:  # type: ignore[attr-defined]
                    assoc.release()  # type: ignore[attr-defined]
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
    return result
