"""C-FIND on the lean acceptor (PS3.4 Annex C, PS3.7 §9.1.2, §9.3.2): the protocol half.

The matching, the statuses and the response identifiers are :meth:`pacsbox.dicom.scp.find.
FindSCP.answer` — the same code pynetdicom's handler calls. This module only moves bytes:

- the request identifier is decoded with pydicom's data set reader in the context's transfer
  syntax (Implicit or Explicit VR Little Endian; Big Endian contexts are not served here);
- each C-FIND-RSP command set (PS3.7 §9.3.2.2) is built by hand in Implicit VR Little Endian
  (PS3.7 §6.3.1) and sent with its identifier in the same P-DATA-TF PDU when it fits
  (PS3.8 §9.3.5; one PDV for the command, one or more for the data set);
- response identifiers with plain ASCII text values are encoded directly from the data set's
  elements; anything else (sequences, binary VRs, non-ASCII text) goes through pydicom's
  writer, so the bytes are always what pydicom would write;
- pending responses are written in batches (one ``sendall`` for several), and between
  matches the socket is polled without blocking for a C-CANCEL-RQ (PS3.7 §9.3.2.3), which
  ends the search with status FE00.

Why: pynetdicom's per-message path (primitive → message → fragments, a DUL thread polling
every millisecond) costs ~2 ms per pending response; queries with hundreds of matches are
dominated by it (bench/README.md "Query").
"""

from __future__ import annotations

import select
import struct
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
#: transfer syntaxes of Q/R contexts this path serves
LEAN_FIND_SYNTAXES = frozenset({IMPLICIT_LE, EXPLICIT_LE})

C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_CANCEL_RQ = 0x0FFF
STATUS_PENDING = 0xFF00
#: flush pending responses when this many bytes are waiting
BATCH_BYTES = 64 * 1024

#: VRs whose value is text that may be written as is when it is ASCII (PS3.5 §6.2)
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI"}
    | {"UR", "UT"}
)
#: VRs with a 4-byte length in Explicit VR (PS3.5 §7.1.2)
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT"})


class CancelledByPeer(Exception):
    """Raised by the cancel poll when the peer aborted or closed the connection."""


def decode_identifier(data: bytes, transfer_syntax: str) -> Dataset:
    """The C-FIND-RQ identifier (PS3.4 §C.4.1.1.3) as a pydicom data set."""
    ds = read_dataset(
        BytesIO(data), is_implicit_VR=transfer_syntax == IMPLICIT_LE, is_little_endian=True
    )
    ds.set_original_encoding(transfer_syntax == IMPLICIT_LE, True)
    return ds


def _text_value(value: Any) -> str | None:
    """The ASCII text of an element value, or None when it needs pydicom's writer."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value if value.isascii() else None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        parts = []
        for v in value:
            if not isinstance(v, str):
                v = str(v)
            if not v.isascii() or "\\" in v:
                return None
            parts.append(v)
        return "\\".join(parts)
    text = str(value)  # PersonName, IS, DSfloat …: their str() is the DICOM text
    return text if text.isascii() else None


def encode_identifier(ds: Dataset, transfer_syntax: str) -> bytes:
    """``ds`` encoded in Implicit or Explicit VR Little Endian (PS3.5 §7.1)."""
    implicit = transfer_syntax == IMPLICIT_LE
    charset = 0x00080005 in ds
    out: list[bytes] = []
    pack = struct.pack
    for elem in ds:
        vr = elem.VR
        text = _text_value(elem.value) if vr in _TEXT_VRS else None
        if text is None:
            if charset:  # text may need the data set's character set: pydicom writes all
                return _pydicom_write(ds, implicit)
            one = Dataset()
            one[elem.tag] = elem
            out.append(_pydicom_write(one, implicit))
            continue
        raw = text.encode("ascii")
        if len(raw) % 2:
            raw += b"\x00" if vr == "UI" else b" "
        group, number = elem.tag >> 16, elem.tag & 0xFFFF
        if implicit:
            out.append(pack("<HHI", group, number, len(raw)))
        elif vr in _LONG_VRS:
            out.append(pack("<HH2sHI", group, number, vr.encode(), 0, len(raw)))
        else:
            if len(raw) > 0xFFFF:
                return _pydicom_write(ds, implicit)
            out.append(pack("<HH2sH", group, number, vr.encode(), len(raw)))
        out.append(raw)
    return b"".join(out)


def _pydicom_write(ds: Dataset, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


# -- command sets (PS3.7 §9.3.2.2), Implicit VR Little Endian ------------------------------
def _elem(number: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, number, len(value)) + value


def _pad_ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def find_response_command(
    message_id: int, sop_class: str, status: int, has_identifier: bool, failure: Dataset | None
) -> bytes:
    """A C-FIND-RSP command set; ``failure`` carries Error Comment / Offending Element."""
    body = [
        _elem(0x0002, _pad_ui(sop_class)),
        _elem(0x0100, struct.pack("<H", C_FIND_RSP)),
        _elem(0x0120, struct.pack("<H", message_id)),
        _elem(0x0800, struct.pack("<H", 0x0001 if has_identifier else 0x0101)),
        _elem(0x0900, struct.pack("<H", status)),
    ]
    if failure is not None:
        offending = failure.get("OffendingElement")
        if offending:
            tags = offending if isinstance(offending, list | tuple) else [offending]
            packed = b"".join(struct.pack("<HH", int(t) >> 16, int(t) & 0xFFFF) for t in tags)
            body.append(_elem(0x0901, packed))
        comment = failure.get("ErrorComment")
        if comment:
            text = str(comment).replace("\\", "/")[:64].encode("ascii", "replace")
            body.append(_elem(0x0902, text + b" " if len(text) % 2 else text))
    payload = b"".join(body)
    return _elem(0x0000, struct.pack("<I", len(payload))) + payload


def p_data(context_id: int, command: bytes, dataset: bytes | None, max_pdu: int) -> bytes:
    """P-DATA-TF PDUs (PS3.8 §9.3.5) carrying one message: the command PDV and the data set
    PDVs, packed into as few PDUs as the peer's maximum length allows."""
    limit = max_pdu if max_pdu else 1 << 30
    pdvs: list[tuple[int, bytes | memoryview]] = [(0x03, command)]
    if dataset is not None:
        room = max(limit - 6, 2)
        view = memoryview(dataset)
        chunks = [view[i : i + room] for i in range(0, len(dataset), room)] or [view]
        for i, chunk in enumerate(chunks):
            pdvs.append((0x02 if i == len(chunks) - 1 else 0x00, chunk))
    out: list[bytes] = []
    pdu: list[bytes] = []
    size = 0
    for control, data in pdvs:
        item = struct.pack(">IBB", len(data) + 2, context_id, control) + bytes(data)
        if pdu and size + len(item) > limit:
            out.append(struct.pack(">BBI", 0x04, 0, size) + b"".join(pdu))
            pdu, size = [], 0
        pdu.append(item)
        size += len(item)
    out.append(struct.pack(">BBI", 0x04, 0, size) + b"".join(pdu))
    return b"".join(out)


class LeanFind:
    """Answers one C-FIND-RQ on a lean association."""

    def __init__(
        self,
        find_scp: Any,
        send: Callable[[bytes], None],
        poll_cancel: Callable[[int], bool],
        max_pdu: int,
    ) -> None:
        self.find_scp = find_scp
        self.send = send
        self.poll_cancel = poll_cancel
        self.max_pdu = max_pdu

    def respond(
        self,
        context_id: int,
        transfer_syntax: str,
        message_id: int,
        sop_class: str,
        identifier: bytes,
        calling: str,
    ) -> None:
        settings = self.find_scp.settings
        cancelled = False

        def is_cancelled() -> bool:
            nonlocal cancelled
            if not cancelled:
                cancelled = self.poll_cancel(message_id)
            return cancelled

        responses: Iterator[tuple[Any, Any]] = self.find_scp.answer(
            calling,
            sop_class,
            lambda: decode_identifier(identifier, transfer_syntax),
            relational=settings.relational_queries,
            combined=False,
            is_cancelled=is_cancelled,
        )
        batch: list[bytes] = []
        waiting = 0
        final = False
        try:
            for status, ds in responses:
                if isinstance(status, Dataset):  # a failure data set from FindSCP
                    command = find_response_command(
                        message_id, sop_class, int(status.Status), False, status
                    )
                    batch.append(p_data(context_id, command, None, self.max_pdu))
                    final = True
                    break
                code = int(status)
                data = encode_identifier(ds, transfer_syntax) if ds is not None else None
                command = find_response_command(message_id, sop_class, code, data is not None, None)
                pdu = p_data(context_id, command, data, self.max_pdu)
                batch.append(pdu)
                waiting += len(pdu)
                if code != STATUS_PENDING:
                    final = True
                    break
                if waiting >= BATCH_BYTES:
                    self.send(b"".join(batch))
                    batch, waiting = [], 0
        finally:
            close = getattr(responses, "close", None)
            if close is not None:
                close()
        if not final:  # every match sent: the final response is Success (PS3.4 §C.4.1.3.1)
            command = find_response_command(message_id, sop_class, 0x0000, False, None)
            batch.append(p_data(context_id, command, None, self.max_pdu))
        self.send(b"".join(batch))


def socket_has_data(sock: Any) -> bool:
    """True when a read on ``sock`` would not block (data, close or error pending)."""
    readable, _w, _x = select.select([sock], [], [], 0)
    return bool(readable)
