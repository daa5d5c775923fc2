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
- pending responses are written in batches (the first at once, then growing to 64 KB per
  ``sendall``), and between
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

from pacsbox.dicom.commands import cmd_element, command_set, comment_value, pad_ui

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
_LONG_VR_BYTES = frozenset(vr.encode() for vr in _LONG_VRS)


class CancelledByPeer(Exception):
    """Raised by the cancel poll when the peer aborted or closed the connection."""


def _check_lengths(data: bytes, implicit: bool) -> None:
    """Refuse an identifier whose top-level elements claim more bytes than it holds (pydicom
    would silently read short values). Stops at the first undefined length (a sequence)."""
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise ValueError(f"identifier truncated at byte {pos}")
        if implicit:
            length = struct.unpack_from("<I", data, pos + 4)[0]
            pos += 8
        elif data[pos + 4 : pos + 6] in _LONG_VR_BYTES:
            if pos + 12 > end:
                raise ValueError(f"identifier truncated at byte {pos}")
            length = struct.unpack_from("<I", data, pos + 8)[0]
            pos += 12
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            pos += 8
        if length == 0xFFFFFFFF:
            return
        if pos + length > end:
            raise ValueError(f"an element claims {length} bytes, {end - pos} are left")
        pos += length


def decode_identifier(data: bytes, transfer_syntax: str) -> Dataset:
    """The C-FIND-RQ identifier (PS3.4 §C.4.1.1.3) as a pydicom data set."""
    _check_lengths(data, transfer_syntax == IMPLICIT_LE)
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
def find_response_command(
    message_id: int, sop_class: str, status: int, has_identifier: bool, failure: Dataset | None
) -> bytes:
    """A C-FIND-RSP command set; ``failure`` carries Error Comment / Offending Element."""
    body = [
        cmd_element(0x0002, pad_ui(sop_class)),
        cmd_element(0x0100, struct.pack("<H", C_FIND_RSP)),
        cmd_element(0x0120, struct.pack("<H", message_id)),
        cmd_element(0x0800, struct.pack("<H", 0x0001 if has_identifier else 0x0101)),
        cmd_element(0x0900, struct.pack("<H", status)),
    ]
    if failure is not None:
        offending = failure.get("OffendingElement")
        if offending:
            tags = offending if isinstance(offending, list | tuple) else [offending]
            packed = b"".join(struct.pack("<HH", int(t) >> 16, int(t) & 0xFFFF) for t in tags)
            body.append(cmd_element(0x0901, packed))
        comment = failure.get("ErrorComment")
        if comment:
            body.append(cmd_element(0x0902, comment_value(str(comment))))
    return command_set(body)


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


class RowEncoder:
    """Encodes pending responses straight from the query engine's rows (PS3.4 §C.4.1.1.3.2).

    The response's element list is the same for every row of one request, so it is planned
    once: (tag, VR, where the value comes from), sorted by tag. A row whose values are all
    ASCII text (str/int/list of str) is then written without building a pydicom data set;
    any other row (JSON-sourced attributes, sequences, binary VRs, non-ASCII text) falls
    back to :meth:`FindSCP.response` + pydicom's writer, so the bytes are always the same as
    :func:`encode_identifier` of the data set ``response`` builds (checked by the tests).
    """

    def __init__(self, find_scp: Any, transfer_syntax: str) -> None:
        self.find_scp = find_scp
        self.implicit = transfer_syntax == IMPLICIT_LE
        self.transfer_syntax = transfer_syntax
        self.plan: list[tuple[int, str, str | None, bytes | None]] | None = None
        self.fast = True
        self.charset_element = b""

    def _header(self, tag: int, vr: str, length: int) -> bytes:
        group, number = tag >> 16, tag & 0xFFFF
        if self.implicit:
            return struct.pack("<HHI", group, number, length)
        if vr in _LONG_VRS:
            return struct.pack("<HH2sHI", group, number, vr.encode(), 0, length)
        return struct.pack("<HH2sH", group, number, vr.encode(), length)

    def _constant(self, tag: int, vr: str, text: str) -> bytes:
        raw = text.encode("ascii")
        if len(raw) % 2:
            raw += b"\x00" if vr == "UI" else b" "
        return self._header(tag, vr, len(raw)) + raw

    def _make_plan(self, query: Any, requested: list[Any], row: Any, charset_rq: list[str]) -> None:
        from pydicom.datadict import dictionary_VR, tag_for_keyword

        from pacsbox.dicom.scp.find import (
            INSTANCE_AVAILABILITY,
            QUERY_RETRIEVE_LEVEL,
            RETRIEVE_AE_TITLE,
            SPECIFIC_CHARACTER_SET,
        )

        ae_title = self.find_scp.settings.ae_title
        entries: dict[int, tuple[int, str, str | None, bytes | None]] = {
            QUERY_RETRIEVE_LEVEL: (
                QUERY_RETRIEVE_LEVEL,
                "CS",
                None,
                self._constant(QUERY_RETRIEVE_LEVEL, "CS", query.level.name),
            )
        }
        skip = {SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL}
        for elem in requested:
            tag = int(elem.tag)
            if tag in skip or tag in entries:
                continue
            keyword = elem.keyword
            if tag == RETRIEVE_AE_TITLE:
                entries[tag] = (tag, "AE", None, self._constant(tag, "AE", ae_title))
            elif tag == INSTANCE_AVAILABILITY:
                entries[tag] = (tag, "CS", None, self._constant(tag, "CS", "ONLINE"))
            else:
                vr = elem.VR if elem.VR != "UN" or not keyword else dictionary_VR(tag)
                if keyword and keyword in row.values:
                    vr = elem.VR if elem.VR != "UN" else dictionary_VR(tag)
                    entries[tag] = (tag, vr, keyword, None)
                else:
                    entries[tag] = (tag, vr, None, self._header(tag, vr, 0))
                if vr not in _TEXT_VRS:
                    self.fast = False  # sequences, binary VRs: pydicom's writer
        for keyword in row.values:  # unique keys of the levels, not asked for
            tag = int(tag_for_keyword(keyword) or 0)
            if tag and tag not in entries:
                vr = dictionary_VR(tag)
                entries[tag] = (tag, vr, keyword, None)
                if vr not in _TEXT_VRS:
                    self.fast = False
        for tag, vr, text in (
            (RETRIEVE_AE_TITLE, "AE", ae_title),
            (INSTANCE_AVAILABILITY, "CS", "ONLINE"),
        ):
            if tag not in entries:
                entries[tag] = (tag, vr, None, self._constant(tag, vr, text))
        if charset_rq:
            self.charset_element = self._constant(
                SPECIFIC_CHARACTER_SET, "CS", "\\".join(charset_rq)
            )
        self.plan = [entries[t] for t in sorted(entries)]

    def __call__(self, query: Any, requested: list[Any], row: Any, charset_rq: list[str]) -> Any:
        if self.plan is None:
            self._make_plan(query, requested, row, charset_rq)
        if self.fast:
            out = self._fast(row)
            if out is not None:
                return out
        ds = self.find_scp.response(query, requested, row, charset_rq)
        return encode_identifier(ds, self.transfer_syntax)

    def _fast(self, row: Any) -> bytes | None:
        values = row.values
        out = [self.charset_element]
        assert self.plan is not None
        for tag, vr, keyword, constant in self.plan:
            if constant is not None:
                out.append(constant)
                continue
            value = values.get(keyword)  # type: ignore[arg-type]
            if value is None or value == "" or value == []:
                out.append(self._header(tag, vr, 0))
                continue
            if isinstance(value, str):
                text = value
            elif isinstance(value, int) and not isinstance(value, bool):
                text = str(value)
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                if any("\\" in v for v in value):
                    return None
                text = "\\".join(value)
            else:
                return None  # JSON-sourced attribute or anything unusual
            if not text.isascii():
                return None
            raw = text.encode("ascii")
            if len(raw) % 2:
                raw += b"\x00" if vr == "UI" else b" "
            if len(raw) > 0xFFFF and vr not in _LONG_VRS and not self.implicit:
                return None
            out.append(self._header(tag, vr, len(raw)))
            out.append(raw)
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
        #: a protocol violation or abort seen by the poll: ends the search, then raised here
        #: (FindSCP.answer would turn an exception into a C000 response)
        broken: BaseException | None = None

        def is_cancelled() -> bool:
            nonlocal cancelled, broken
            if not cancelled:
                try:
                    cancelled = self.poll_cancel(message_id)
                except Exception as exc:
                    broken, cancelled = exc, True
            return cancelled

        responses: Iterator[tuple[Any, Any]] = self.find_scp.answer(
            calling,
            sop_class,
            lambda: decode_identifier(identifier, transfer_syntax),
            relational=settings.relational_queries,
            combined=False,
            is_cancelled=is_cancelled,
            encode=RowEncoder(self.find_scp, transfer_syntax),
        )
        batch: list[bytes] = []
        waiting = 0
        #: the first match goes out at once (the user sees it, and a C-CANCEL sent on seeing
        #: it arrives while there is still something to cancel); then batches grow to 64 KB
        limit = 0
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
                data = (
                    ds
                    if isinstance(ds, bytes) or ds is None
                    else encode_identifier(ds, transfer_syntax)
                )
                command = find_response_command(message_id, sop_class, code, data is not None, None)
                pdu = p_data(context_id, command, data, self.max_pdu)
                batch.append(pdu)
                waiting += len(pdu)
                if code != STATUS_PENDING:
                    final = True
                    break
                if waiting >= limit:
                    self.send(b"".join(batch))
                    batch, waiting = [], 0
                    limit = min(max(2 * limit, 4096), BATCH_BYTES)
        finally:
            close = getattr(responses, "close", None)
            if close is not None:
                close()
        if broken is not None:
            raise broken
        if not final:  # every match sent: the final response is Success (PS3.4 §C.4.1.3.1)
            command = find_response_command(message_id, sop_class, 0x0000, False, None)
            batch.append(p_data(context_id, command, None, self.max_pdu))
        self.send(b"".join(batch))


def socket_has_data(sock: Any) -> bool:
    """True when a read on ``sock`` would not block (data, close or error pending)."""
    readable, _w, _x = select.select([sock], [], [], 0)
    return bool(readable)
