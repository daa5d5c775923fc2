"""A lean DICOM Upper Layer acceptor for associations that carry only Storage and Verification.

Why: a modality sending images is the archive's hot path. pynetdicom spends ~6 ms of CPU per
0.5 MB instance in its generic state machine, two polling threads per association and full
data-set objects for every command; this acceptor does the same protocol work in well under
1 ms, so ingest (parse the header, write durably, index) dominates (SPEC PERF, A7).

What it implements, for associations whose proposed abstract syntaxes are all Storage SOP
classes or Verification and that carry no SCP/SCU role selection items:
- PS3.8 §9.3.2–9.3.4: A-ASSOCIATE-RQ decoding and AC/RJ encoding (pynetdicom's PDU classes and
  its acceptor context negotiation are reused), §9.3.5 P-DATA-TF, §9.3.6–9.3.7 A-RELEASE,
  §9.3.8 A-ABORT; ARTIM-like time-outs on every read (R4).
- PS3.7 §9.3.1 C-STORE-RQ/RSP and §9.3.5 C-ECHO-RQ/RSP, command sets in Implicit VR LE
  (PS3.7 §6.3.1), hand-decoded and hand-encoded.
Everything else (TLS, Query/Retrieve, role selection, N-services) goes to pynetdicom, which
receives the untouched socket: the A-ASSOCIATE-RQ is only *peeked* to decide.

Data set fragments are kept as views into the received PDUs (read into a reused
per-association buffer) and written with one ``writev``; instances larger than
``SPILL_BYTES`` are spooled to a temp file so memory stays bounded whatever the size (R4).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
)
from pynetdicom.presentation import negotiate_as_acceptor

from pacsbox import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsbox.archive.audit import StoreBatch
from pacsbox.archive.ingest import Ingest, IngestRefused
from pacsbox.archive.registry import AERegistry
from pacsbox.dicom.commands import cmd_element, command_set, comment_value, pad_ui
from pacsbox.dicom.contexts import (
    ACCEPTED_ABSTRACT_SYNTAXES,
    QR_FIND_SOP_CLASSES,
    contexts_for_request,
)
from pacsbox.dicom.find_responder import (
    C_FIND_RQ,
    LEAN_FIND_SYNTAXES,
    LeanFind,
    socket_has_data,
)

log = logging.getLogger("pacsbox.dicom")
store_log = logging.getLogger("pacsbox.dicom.store")

VERIFICATION = "1.2.840.10008.1.1"
#: Instances above this size are spooled to disk while they arrive.
SPILL_BYTES = 64 * 1024 * 1024
#: Size of the per-association receive buffer P-DATA-TF bodies are read into (a PDU larger
#: than this gets a buffer of its own size).
ARENA_BYTES = 1024 * 1024
#: A peer may not declare an A-ASSOCIATE-RQ larger than this.
MAX_ASSOCIATE_RQ = 256 * 1024

C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP = 0x0001, 0x8001, 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF


class ProtocolError(Exception):
    """The peer violated PS3.8; the association is aborted (A-ABORT source 2)."""

    def __init__(self, message: str, reason: int = 0x00) -> None:
        super().__init__(message)
        self.reason = reason


class PeerGone(Exception):
    """The connection closed or timed out."""


def peek_associate_rq(sock: socket.socket, timeout: float) -> bytes | None:
    """Return the whole A-ASSOCIATE-RQ PDU without consuming it, or None if it is not one."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    need = 6
    data = b""
    while True:
        if time.monotonic() > deadline:
            raise PeerGone("A-ASSOCIATE-RQ not received in time")
        data = sock.recv(need, socket.MSG_PEEK)
        if not data:
            raise PeerGone("closed before A-ASSOCIATE-RQ")
        if len(data) >= 6:
            if data[0] != 0x01:
                return None
            length = struct.unpack(">I", data[2:6])[0]
            if length > MAX_ASSOCIATE_RQ:
                return None
            need = 6 + length
            if len(data) >= need:
                return data[:need]
        # MSG_PEEK returns what is there: wait for more without busy looping.
        if len(data) < need:
            threading.Event().wait(0.001)


#: Decoded A-ASSOCIATE-RQs by their bytes: a modality sends the same request (often 100+
#: presentation contexts, ~13 ms of CPU to decode with pynetdicom) for every association.
#: The primitives are only read. Bounded: cleared when full.
_RQ_CACHE: dict[bytes, tuple[bool, A_ASSOCIATE | None]] = {}
_RQ_CACHE_SIZE = 64


def is_storage_only(rq_pdu: bytes) -> tuple[bool, A_ASSOCIATE | None]:
    """Decode the RQ; True when the fast path may serve it (storage/verification only)."""
    key = bytes(rq_pdu)
    hit = _RQ_CACHE.get(key)
    if hit is None:
        hit = _is_storage_only(key)
        if len(_RQ_CACHE) >= _RQ_CACHE_SIZE:
            _RQ_CACHE.clear()
        _RQ_CACHE[key] = hit
    return hit


#: What the lean path serves: Storage, Verification and the Q/R FIND models.
LEAN_ABSTRACT_SYNTAXES = ACCEPTED_ABSTRACT_SYNTAXES | frozenset(QR_FIND_SOP_CLASSES)
_NOT_LEAN_ITEMS = (
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassExtendedNegotiation,
    SOPClassCommonExtendedNegotiation,
)


def _is_storage_only(rq_pdu: bytes) -> tuple[bool, A_ASSOCIATE | None]:
    """Lean when every proposed context is Storage, Verification or a Q/R FIND model (FIND
    only with Implicit/Explicit VR Little Endian proposed) and there is no role selection or
    SOP class extended negotiation (relational-query negotiation goes to pynetdicom)."""
    try:
        pdu = A_ASSOCIATE_RQ()
        pdu.decode(rq_pdu)
        primitive = pdu.to_primitive()
    except Exception:
        return False, None
    contexts = primitive.presentation_context_definition_list
    if not contexts:
        return False, primitive
    for cx in contexts:
        abstract = str(cx.abstract_syntax)
        if abstract not in LEAN_ABSTRACT_SYNTAXES:
            return False, primitive
        if abstract in QR_FIND_SOP_CLASSES and not any(
            str(ts) in LEAN_FIND_SYNTAXES for ts in cx.transfer_syntax
        ):
            return False, primitive
    if any(isinstance(i, _NOT_LEAN_ITEMS) for i in primitive.user_information):
        return False, primitive
    return True, primitive


# -- command sets (PS3.7 §6.3, §9.3.1, §9.3.5), Implicit VR Little Endian -----------------
def parse_command(data: bytes) -> dict[int, bytes]:
    """Element number → raw value for the group-0000 elements of a command set."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos + 8 <= end:
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        pos += 8
        if group != 0x0000 or pos + length > end:
            raise ProtocolError("malformed command set")
        out[elem] = data[pos : pos + length]
        pos += length
    if pos != end:
        raise ProtocolError("malformed command set (trailing bytes)")
    return out


def _ui(value: bytes) -> str:
    return value.decode("ascii", "replace").rstrip("\x00 ")


def _us(value: bytes) -> int:
    return struct.unpack("<H", value[:2])[0] if len(value) >= 2 else 0


def encode_response(
    command_field: int,
    message_id: int,
    sop_class: str,
    sop_instance: str | None,
    status: int,
    comment: str | None = None,
) -> bytes:
    """A response command set with no data set (CommandDataSetType 0101H)."""
    body = [
        cmd_element(0x0002, pad_ui(sop_class)),
        cmd_element(0x0100, struct.pack("<H", command_field)),
        cmd_element(0x0120, struct.pack("<H", message_id)),
        cmd_element(0x0800, struct.pack("<H", 0x0101)),
        cmd_element(0x0900, struct.pack("<H", status)),
    ]
    if comment:
        body.append(cmd_element(0x0902, comment_value(comment)))
    if sop_instance:
        body.append(cmd_element(0x1000, pad_ui(sop_instance)))
    return command_set(body)


def p_data_pdu(context_id: int, command: bytes) -> bytes:
    """One P-DATA-TF with one PDV: a complete command (control header 03H)."""
    pdv_length = len(command) + 2
    return (
        struct.pack(">BBI", 0x04, 0, pdv_length + 4)
        + struct.pack(">I", pdv_length)
        + bytes((context_id, 0x03))
        + command
    )


def abort_pdu(source: int = 0x02, reason: int = 0x00) -> bytes:
    return struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, source, reason)


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    return struct.pack(">BBIBBBB", 0x03, 0, 4, 0, result, source, reason)


RELEASE_RP = struct.pack(">BBII", 0x06, 0, 4, 0)


@dataclass(frozen=True)
class _Negotiated:
    """The outcome of negotiating one A-ASSOCIATE-RQ (cached by the RQ's bytes: the same
    request, under the same settings, always gets the same answer; the calling AE check is
    done for every association)."""

    contexts: dict[int, tuple[str, str]]
    peer_max_pdu: int
    ac_pdu: bytes
    shown: str
    results: int

    # -- data transfer ------------------------------------------------------------------


class _Message:
    """A DIMSE message being reassembled from PDVs."""

    __slots__ = ("context_id", "command", "command_done", "chunks", "size", "spool", "spool_path")

    def __init__(self, context_id: int) -> None:
        self.context_id = context_id
        self.command = bytearray()
        self.command_done = False
        self.chunks: list[memoryview] = []
        self.size = 0
        self.spool: Any = None
        self.spool_path: Path | None = None

    def discard(self) -> None:
        if self.spool is not None:
            self.spool.close()
        if self.spool_path is not None:
            self.spool_path.unlink(missing_ok=True)


class StorageAssociation:
    """Serves one association on a blocking socket, in its own thread."""

    def __init__(
        self,
        sock: socket.socket,
        address: tuple[str, int],
        primitive: A_ASSOCIATE,
        acceptor: StorageAcceptor,
    ) -> None:
        self.sock = sock
        self.address = address
        self.rq = primitive
        self.acceptor = acceptor
        self.calling = (primitive.calling_ae_title or "").strip()
        self.called = (primitive.called_ae_title or "").strip()
        self.contexts: dict[int, tuple[str, str]] = {}  # id → (abstract syntax, transfer syntax)
        self.peer_max_pdu = 0
        self.stored = 0
        #: store audit events, one per study, written when the association ends
        hook = getattr(acceptor.ingest, "audit", None)
        self.audit = StoreBatch(hook, f"AE:{self.calling}", address[0], "C-STORE")
        self._arena = bytearray(0)  # allocated with the first P-DATA-TF (see _pdu_body)
        self._arena_used = 0

    # -- socket helpers -----------------------------------------------------------------
    def _recv_exact(self, n: int) -> bytearray:
        buf = bytearray(n)
        self._recv_into(memoryview(buf))
        return buf

    def _recv_into(self, view: memoryview) -> None:
        """Fill ``view`` from the socket (PeerGone on close or time-out)."""
        n = len(view)
        got = 0
        recv_into = self.sock.recv_into
        while got < n:
            try:
                k = recv_into(view[got:] if got else view, n - got)
            except TimeoutError as exc:
                raise PeerGone("network time-out") from exc
            except OSError as exc:
                raise PeerGone(str(exc)) from exc
            if k == 0:
                raise PeerGone("connection closed by peer")
            got += k

    def _pdu_body(self, length: int, idle: bool) -> memoryview:
        """A P-DATA-TF body received into the association's arena.

        PDU bodies are laid out one after the other in one preallocated buffer, and data set
        fragments stay views into it (no copy, no per-PDU allocation and zero-fill). When no
        message is in progress (``idle``) nothing refers to the arena any more and it is
        reused from its start; when a PDU does not fit, a new arena is started (views into
        the old one keep it alive until their message is done). Memory per association is
        thus bounded as before: the message in progress (at most SPILL_BYTES in memory)
        plus one arena.
        """
        if idle:
            self._arena_used = 0
        if self._arena_used + length > len(self._arena):
            self._arena = bytearray(max(ARENA_BYTES, length))
            self._arena_used = 0
        start = self._arena_used
        view = memoryview(self._arena)[start : start + length]
        self._recv_into(view)
        self._arena_used = start + length
        return view

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    # -- association establishment ------------------------------------------------------
    def establish(self) -> bool:
        rq_pdu = self._recv_exact(6)
        length = struct.unpack(">I", rq_pdu[2:6])[0]
        rq_body = self._recv_exact(length)  # consume what was peeked
        decision = self.acceptor.check_calling(self.calling, self.address[0])
        if decision is not None:
            log.warning(
                "rejected association from %s:%s calling=%s called=%s: %s",
                self.address[0],
                self.address[1],
                self.calling,
                self.called,
                decision[1],
            )
            self._send(reject_pdu(*decision[0]))
            return False
        key = bytes(rq_pdu) + bytes(rq_body)
        negotiated = self.acceptor.negotiated.get(key)
        if negotiated is None:
            negotiated = self._negotiate()
            if len(self.acceptor.negotiated) >= _RQ_CACHE_SIZE:
                self.acceptor.negotiated.clear()
            self.acceptor.negotiated[key] = negotiated
        self.contexts = dict(negotiated.contexts)
        self.peer_max_pdu = negotiated.peer_max_pdu
        self._send(negotiated.ac_pdu)
        shown, results = negotiated.shown, negotiated.results
        log.info(
            "association from %s:%s calling=%s called=%s accepted %d/%d contexts: %s",
            self.address[0],
            self.address[1],
            self.calling,
            self.called,
            len(self.contexts),
            results,
            shown,
        )
        return True

    def _negotiate(self) -> _Negotiated:
        """Presentation contexts (PS3.8 §9.3.2.2) and the A-ASSOCIATE-AC for this RQ."""
        settings = self.acceptor.settings
        rq_contexts = self.rq.presentation_context_definition_list
        ours = contexts_for_request(rq_contexts, settings.preferred_transfer_syntax)
        if self.acceptor.find is None:
            ours = [cx for cx in ours if str(cx.abstract_syntax) not in QR_FIND_SOP_CLASSES]
        for cx in ours:  # FIND identifiers are decoded here in Little Endian only
            if str(cx.abstract_syntax) in QR_FIND_SOP_CLASSES:
                cx.transfer_syntax = [ts for ts in cx.transfer_syntax if ts in LEAN_FIND_SYNTAXES]
        results, _roles = negotiate_as_acceptor(rq_contexts, ours, None)
        contexts = {
            cx.context_id: (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in results
            if cx.result == 0x00
        }
        peer_max_pdu = 0
        for item in self.rq.user_information:
            if isinstance(item, MaximumLengthNotification):
                peer_max_pdu = item.maximum_length_received or 0
        ac = A_ASSOCIATE()
        ac.application_context_name = self.rq.application_context_name
        ac.calling_ae_title = self.rq.calling_ae_title
        ac.called_ae_title = self.rq.called_ae_title
        ac.result = 0x00
        ac.presentation_context_definition_results_list = results
        max_len = MaximumLengthNotification()
        max_len.maximum_length_received = settings.max_pdu_size
        impl_uid = ImplementationClassUIDNotification()
        impl_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        impl_name = ImplementationVersionNameNotification()
        impl_name.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ac.user_information = [max_len, impl_uid, impl_name]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(ac)
        shown = ", ".join(f"{UID(a).name}/{UID(t).name}" for a, t in list(contexts.values())[:6])
        if len(contexts) > 6:
            shown += f", +{len(contexts) - 6} more"
        return _Negotiated(contexts, peer_max_pdu, pdu.encode(), shown, len(results))

    def run(self) -> None:
        how = "closed"
        try:
            if not self.establish():
                return
            self.sock.settimeout(self.acceptor.settings.network_timeout)
            how = self._loop()
        except ProtocolError as exc:
            log.warning(
                "aborting association from %s calling=%s: %s", self.address[0], self.calling, exc
            )
            with contextlib.suppress(OSError):
                self._send(abort_pdu(0x02, exc.reason))
            how = "aborted (protocol error)"
        except PeerGone as exc:
            how = f"ended ({exc})"
        except Exception:
            log.exception("association from %s calling=%s failed", self.address[0], self.calling)
            with contextlib.suppress(OSError):
                self._send(abort_pdu(0x02, 0x00))
            how = "aborted (internal error)"
        finally:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.audit.flush()
            if self.contexts:
                log.info(
                    "association from %s calling=%s %s, %d instances stored",
                    self.address[0],
                    self.calling,
                    how,
                    self.stored,
                )

    def _loop(self) -> str:
        max_pdu = self.acceptor.settings.max_pdu_size or (1 << 31)
        limit = max(max_pdu, 16384) + 4096  # tolerate peers that count the header
        current: _Message | None = None
        while True:
            header = self._recv_exact(6)
            pdu_type = header[0]
            length = struct.unpack(">I", header[2:6])[0]
            if pdu_type == 0x04:
                if length > limit:
                    raise ProtocolError(
                        f"P-DATA-TF of {length} bytes exceeds the maximum PDU length {max_pdu}",
                        0x06,
                    )
                body = self._pdu_body(length, current is None)
                current = self._p_data(body, current)
            elif pdu_type == 0x05:
                if length != 4:
                    raise ProtocolError("malformed A-RELEASE-RQ", 0x06)
                self._recv_exact(length)
                if current is not None:
                    current.discard()
                self._send(RELEASE_RP)
                return "released"
            elif pdu_type == 0x07:
                if current is not None:
                    current.discard()
                return "aborted by peer"
            else:
                raise ProtocolError(f"unexpected PDU type {pdu_type:#04x}", 0x01)

    def _p_data(self, body: memoryview, current: _Message | None) -> _Message | None:
        pos, end = 0, len(body)
        while pos < end:
            if pos + 6 > end:
                raise ProtocolError("truncated PDV item", 0x06)
            item_len = struct.unpack(">I", body[pos : pos + 4])[0]
            if item_len < 2 or pos + 4 + item_len > end:
                raise ProtocolError("PDV item length does not fit the PDU", 0x06)
            context_id = body[pos + 4]
            control = body[pos + 5]
            fragment = body[pos + 6 : pos + 4 + item_len]
            pos += 4 + item_len
            if context_id not in self.contexts:
                raise ProtocolError(f"PDV on presentation context {context_id} not accepted")
            if current is None:
                current = _Message(context_id)
            elif current.context_id != context_id:
                raise ProtocolError("PDVs of two messages interleaved")
            if control & 0x01:  # command fragment
                if current.command_done:
                    raise ProtocolError("command fragment after the command was complete")
                current.command += fragment
                if len(current.command) > 65536:
                    raise ProtocolError("command set too large")
                if control & 0x02:
                    current.command_done = True
                    if self._dispatch_if_no_data(current):
                        current = None
            else:
                if not current.command_done:
                    raise ProtocolError("data set fragment before the command")
                self._add_data(current, fragment)
                if control & 0x02:
                    self._dispatch(current)
                    current = None
        return current

    def _add_data(self, msg: _Message, fragment: memoryview) -> None:
        msg.size += len(fragment)
        if msg.spool is None and msg.size > SPILL_BYTES:
            spool_dir = self.acceptor.spool_dir
            fd, name = tempfile.mkstemp(prefix="incoming-", suffix=".part", dir=spool_dir)
            msg.spool = os.fdopen(fd, "wb")
            msg.spool_path = Path(name)
            for chunk in msg.chunks:
                msg.spool.write(chunk)
            msg.chunks = []
        if msg.spool is not None:
            msg.spool.write(fragment)
        else:
            msg.chunks.append(fragment)

    def _dispatch_if_no_data(self, msg: _Message) -> bool:
        """Command complete: dispatch at once when it announces no data set (0101H)."""
        cmd = parse_command(bytes(msg.command))
        if _us(cmd.get(0x0800, b"\x01\x01")) == 0x0101:
            self._dispatch(msg, cmd)
            return True
        return False

    def _dispatch(self, msg: _Message, cmd: dict[int, bytes] | None = None) -> None:
        cmd = cmd if cmd is not None else parse_command(bytes(msg.command))
        field = _us(cmd.get(0x0100, b""))
        message_id = _us(cmd.get(0x0110, b""))
        abstract, ts = self.contexts[msg.context_id]
        if field == C_ECHO_RQ:
            msg.discard()
            self._send(
                p_data_pdu(
                    msg.context_id,
                    encode_response(C_ECHO_RSP, message_id, VERIFICATION, None, 0x0000),
                )
            )
            return
        if field == C_CANCEL_RQ:  # nothing to cancel for storage (PS3.7 §9.3.2.3)
            msg.discard()
            return
        if field == C_FIND_RQ and abstract in QR_FIND_SOP_CLASSES:
            self._find(msg, cmd, message_id, ts)
            return
        if field != C_STORE_RQ or abstract in QR_FIND_SOP_CLASSES:
            msg.discard()
            raise ProtocolError(f"command {field:#06x} is not served on this association")
        sop_class = _ui(cmd.get(0x0002, b""))
        sop_instance = _ui(cmd.get(0x1000, b""))
        status, comment = self.acceptor.store(
            msg, ts, sop_class, sop_instance, self.calling, abstract, self.audit
        )
        if status == 0:
            self.stored += 1
        self._send(
            p_data_pdu(
                msg.context_id,
                encode_response(C_STORE_RSP, message_id, sop_class, sop_instance, status, comment),
            )
        )

    # -- C-FIND (PS3.4 §C.4.1, on this lean path: dicom/find_responder.py) ---------------
    def _find(self, msg: _Message, cmd: dict[int, bytes], message_id: int, ts: str) -> None:
        if msg.spool is not None:
            msg.discard()
            raise ProtocolError("C-FIND identifier larger than any query needs")
        identifier = b"".join(msg.chunks)
        msg.discard()
        sop_class = _ui(cmd.get(0x0002, b""))
        find_scp = self.acceptor.find
        if find_scp is None:
            raise ProtocolError("C-FIND is not served by this acceptor")
        LeanFind(find_scp, self._send, self._poll_cancel, self.peer_max_pdu).respond(
            msg.context_id, ts, message_id, sop_class, identifier, self.calling
        )

    def _poll_cancel(self, message_id: int) -> bool:
        """Between matches: True when a C-CANCEL-RQ for ``message_id`` has arrived (PS3.7
        §9.3.2.3). Anything else from the peer while a C-FIND is outstanding is a protocol
        error (no asynchronous operations are negotiated); an abort or close ends the
        association."""
        if not socket_has_data(self.sock):
            return False
        header = self._recv_exact(6)
        length = struct.unpack(">I", header[2:6])[0]
        if header[0] == 0x07:
            raise PeerGone("aborted by peer during C-FIND")
        if header[0] != 0x04 or length > 65536:
            raise ProtocolError(f"PDU type {header[0]:#04x} while a C-FIND is outstanding")
        body = self._recv_exact(length)
        pos, command = 0, bytearray()
        while pos + 6 <= length:
            item_len = struct.unpack(">I", body[pos : pos + 4])[0]
            if item_len < 2 or pos + 4 + item_len > length or not body[pos + 5] & 0x01:
                raise ProtocolError("malformed PDV while a C-FIND is outstanding", 0x06)
            command += body[pos + 6 : pos + 4 + item_len]
            pos += 4 + item_len
        cmd = parse_command(bytes(command))
        if _us(cmd.get(0x0100, b"")) != C_CANCEL_RQ:
            raise ProtocolError("a request arrived while a C-FIND is outstanding")
        return _us(cmd.get(0x0120, b"")) == message_id


class StorageAcceptor:
    """Shared state of the fast path in one worker: settings, ingest, registry, limits."""

    def __init__(
        self,
        settings: Any,
        ingest: Ingest,
        registry: AERegistry,
        max_associations: int,
        count_other: Callable[[], int] = lambda: 0,
        find: Any = None,
    ) -> None:
        self.settings = settings
        #: the FindSCP whose ``answer`` serves C-FIND here (None: FIND contexts refused)
        self.find = find
        self.ingest = ingest
        self.registry = registry
        self.max_associations = max_associations
        self.count_other = count_other
        self.active = 0
        self._lock = threading.Lock()
        #: A-ASSOCIATE-RQ bytes → _Negotiated (see StorageAssociation.establish)
        self.negotiated: dict[bytes, _Negotiated] = {}
        self.spool_dir = Path(settings.data_dir) / "tmp"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        # settings changed at runtime (PATCH /api/settings) reach this worker process
        from pacsbox.settings import Settings
        from pacsbox.settings_runtime import ingest_updater, watch_settings

        if isinstance(settings, Settings):
            watch_settings(settings, ingest_updater(ingest))

    def check_calling(self, calling: str, host: str) -> tuple[tuple[int, int, int], str] | None:
        """None to accept, else the A-ASSOCIATE-RJ (result, source, reason) and why."""
        if self.active + self.count_other() > self.max_associations:
            return (0x02, 0x03, 0x02), "too many associations (local limit exceeded)"
        try:
            decision = self.registry.check_calling(
                calling,
                host,
                permissive=self.settings.permissive_aes,
                permissive_enabled=self.settings.permissive_aes_enabled,
            )
        except Exception:
            log.exception("AE registry unavailable; rejecting %s (transient)", calling)
            return (0x02, 0x01, 0x01), "AE registry unavailable"
        if not decision.accepted:
            return (0x01, 0x01, 0x03), decision.reason
        if decision.registered:
            log.info("auto-registered calling AE %s from %s (permissive)", calling, host)
        return None

    def serve(self, sock: socket.socket, address: tuple[str, int], primitive: A_ASSOCIATE) -> None:
        with self._lock:
            self.active += 1
        try:
            StorageAssociation(sock, address, primitive, self).run()
        finally:
            with self._lock:
                self.active -= 1

    def store(
        self,
        msg: _Message,
        ts: str,
        sop_class: str,
        sop_instance: str,
        calling: str,
        abstract: str,
        audit: StoreBatch | None = None,
    ) -> tuple[int, str | None]:
        """C-STORE → ingest; returns (status, error comment). ``audit`` counts the outcome."""
        if sop_class != abstract:
            msg.discard()
            if audit is not None:
                audit.failed("", f"{sop_instance}: SOP class differs from the context")
            return 0xA900, "Affected SOP Class UID differs from the presentation context"
        try:
            if msg.spool is not None:
                msg.spool.close()
                msg.spool = None
                stored = self.ingest.store_dataset_file(
                    msg.spool_path,
                    ts,
                    sop_class_uid=sop_class,
                    sop_instance_uid=sop_instance,
                    source_ae=calling,
                )
            else:
                stored = self.ingest.store_dataset(
                    msg.chunks,
                    ts,
                    sop_class_uid=sop_class,
                    sop_instance_uid=sop_instance,
                    source_ae=calling,
                )
        except IngestRefused as exc:
            store_log.warning(
                "refused %s from %s: %04X %s", sop_instance, calling, exc.status, exc.message
            )
            if audit is not None:
                audit.failed("", f"{sop_instance}: {exc.status:04X} {exc.message}")
            return exc.status, exc.message
        except Exception as exc:
            store_log.exception("C-STORE of %s failed", sop_instance)
            if audit is not None:
                audit.failed("", f"{sop_instance}: C000 {type(exc).__name__}")
            return 0xC000, f"cannot process: {type(exc).__name__}"
        finally:
            msg.discard()
        if audit is not None:
            audit.stored(stored.study_instance_uid, stored.outcome, stored.size)
        store_log.info(
            "stored %s class=%s ts=%s size=%d from=%s study=%s %s",
            stored.sop_instance_uid,
            stored.sop_class_uid,
            stored.transfer_syntax_uid,
            stored.size,
            calling,
            stored.study_instance_uid,
            stored.outcome,
        )
        return 0x0000, None
