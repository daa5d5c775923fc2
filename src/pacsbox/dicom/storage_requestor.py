"""A lean DICOM Upper Layer requestor that only sends C-STORE requests (C-MOVE sub-operations).

Why: C-MOVE throughput (SPEC PERF) is bound by how fast one association can push files. The
generic pynetdicom path decodes each file into a Dataset and re-encodes it (the Q/R service
class only accepts Datasets), then fragments it through its state machine and two polling
threads. Here a stored data set goes from the file to the socket unchanged: P-DATA-TF headers
are interleaved with file chunks in one ``sendmsg`` per chunk, so the bytes that arrive are the
bytes that were stored (SPEC B4 rule 1) and memory per association is one chunk.

What it implements (the requestor side of what ``storage_acceptor.py`` accepts):
- PS3.8 §9.3.2–9.3.4 A-ASSOCIATE-RQ/AC/RJ (pynetdicom's PDU classes encode and decode them),
  §9.3.5 P-DATA-TF, §9.3.6–9.3.7 A-RELEASE-RQ/RP, §9.3.8 A-ABORT; a time-out on every read.
- PS3.7 §9.3.1 C-STORE-RQ/RSP, command sets in Implicit VR Little Endian (PS3.7 §6.3.1),
  with Move Originator AE Title / Message ID (PS3.7 §9.1.1.1) for C-MOVE sub-operations.
Every socket gets TCP_NODELAY; DICOM TLS (PS3.15 Annex B.1) when a context is given.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from pacsbox import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsbox.dicom.commands import cmd_element, command_set, pad_ae, pad_ui

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
#: Bytes of file read per sendmsg (a multiple of the fragment size is used).
CHUNK_BYTES = 4 * 1024 * 1024
#: Our own maximum receive PDU (responses are tiny).
OUR_MAX_PDU = 1_048_576
_IOV_MAX = 1000  # below Linux's 1024 iovec limit


class AssociationFailed(Exception):
    """The peer could not be reached, rejected the association or broke the protocol."""


class PeerAborted(AssociationFailed):
    """The association ended during a C-STORE (abort, close or time-out)."""


@dataclass(frozen=True)
class AcceptedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntax: str


def encode_store_rq(
    message_id: int,
    sop_class: str,
    sop_instance: str,
    priority: int = 0,
    originator_ae: str | None = None,
    originator_id: int | None = None,
) -> bytes:
    """C-STORE-RQ command set (PS3.7 §9.3.1.1), Implicit VR LE, data set present."""
    body = [
        cmd_element(0x0002, pad_ui(sop_class)),
        cmd_element(0x0100, struct.pack("<H", C_STORE_RQ)),
        cmd_element(0x0110, struct.pack("<H", message_id & 0xFFFF)),
        cmd_element(0x0700, struct.pack("<H", priority)),
        cmd_element(0x0800, struct.pack("<H", 0x0000)),
        cmd_element(0x1000, pad_ui(sop_instance)),
    ]
    if originator_ae:
        body.append(cmd_element(0x1030, pad_ae(originator_ae)))
    if originator_id is not None:
        body.append(cmd_element(0x1031, struct.pack("<H", originator_id & 0xFFFF)))
    return command_set(body)


def parse_command(data: bytes) -> dict[int, bytes]:
    """Element number → raw value of a group-0000 command set."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos + 8 <= end:
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        pos += 8
        if group != 0x0000 or pos + length > end:
            raise AssociationFailed("malformed command set in a response")
        out[elem] = bytes(data[pos : pos + length])
        pos += length
    return out


@dataclass(frozen=True)
class StoreResult:
    status: int
    comment: str = ""


class StorageRequestor:
    """One outgoing association that sends C-STORE requests, one at a time."""

    def __init__(
        self,
        host: str,
        port: int,
        called_ae: str,
        calling_ae: str,
        contexts: Sequence[tuple[str, Sequence[str]]],
        *,
        tls: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        if not 0 < len(contexts) <= 128:
            raise ValueError("between 1 and 128 presentation contexts (PS3.8 §9.3.2.2)")
        self.host, self.port = host, port
        self.called_ae, self.calling_ae = called_ae, calling_ae
        self.requested = [(str(a), [str(t) for t in ts]) for a, ts in contexts]
        self.tls = tls
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.sock: socket.socket | None = None
        self.accepted: list[AcceptedContext] = []
        self.peer_max_pdu = 0
        self.established = False
        self._rbuf = bytearray()
        self._sbuf = bytearray()

    # -- socket helpers -----------------------------------------------------------------
    def _fill(self, n: int) -> None:
        """Receive until at least ``n`` bytes are buffered (one recv usually suffices)."""
        assert self.sock is not None
        while len(self._rbuf) < n:
            try:
                chunk = self.sock.recv(max(65536, n - len(self._rbuf)))
            except (TimeoutError, OSError) as exc:
                raise PeerAborted(f"{self.called_ae}: {exc or 'network time-out'}") from exc
            if not chunk:
                raise PeerAborted(f"{self.called_ae} closed the connection")
            self._rbuf += chunk

    def _read_pdu(self) -> tuple[int, bytes]:
        self._fill(6)
        pdu_type = self._rbuf[0]
        length = struct.unpack_from(">I", self._rbuf, 2)[0]
        if length > max(OUR_MAX_PDU, 256 * 1024) + 64:
            raise AssociationFailed(f"{self.called_ae} sent a PDU of {length} bytes")
        self._fill(6 + length)
        data = bytes(self._rbuf[: 6 + length])
        del self._rbuf[: 6 + length]
        return pdu_type, data

    def _send_iov(self, parts: list[bytes | memoryview]) -> None:
        assert self.sock is not None
        try:
            if isinstance(self.sock, ssl.SSLSocket):
                self.sock.sendall(b"".join(parts))
                return
            while parts:
                batch = parts[:_IOV_MAX]
                sent = self.sock.sendmsg(batch)
                total = sum(len(p) for p in batch)
                if sent == total:
                    del parts[: len(batch)]
                    continue
                # partial write: drop what went out, slice the part that was cut
                while sent >= len(parts[0]):
                    sent -= len(parts[0])
                    parts.pop(0)
                if sent:
                    parts[0] = memoryview(parts[0])[sent:]
        except (TimeoutError, OSError) as exc:
            raise PeerAborted(f"{self.called_ae}: {exc}") from exc

    # -- association ----------------------------------------------------------------------
    def associate(self) -> list[AcceptedContext]:
        """Connect and negotiate; returns the accepted contexts (AssociationFailed if none)."""
        try:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout)
        except OSError as exc:
            raise AssociationFailed(
                f"cannot connect to {self.called_ae}@{self.host}:{self.port}: {exc}"
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # a whole instance (or 4 MiB chunk) fits in the send buffer: sendmsg returns without
        # waiting for the peer to read, so a busy machine does not have to wake us mid-instance
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHUNK_BYTES)
        sock.settimeout(self.timeout)
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            except (ssl.SSLError, OSError) as exc:
                sock.close()
                raise AssociationFailed(f"TLS with {self.called_ae} failed: {exc}") from exc
        self.sock = sock
        try:
            self._negotiate()
        except BaseException:
            self.close()
            raise
        return self.accepted

    def _negotiate(self) -> None:
        rq = A_ASSOCIATE()
        rq.application_context_name = APPLICATION_CONTEXT
        rq.calling_ae_title = self.calling_ae
        rq.called_ae_title = self.called_ae
        contexts = []
        for i, (abstract, syntaxes) in enumerate(self.requested):
            cx = PresentationContext()
            cx.context_id = 2 * i + 1
            cx.abstract_syntax = UID(abstract)
            cx.transfer_syntax = [UID(ts) for ts in syntaxes]
            contexts.append(cx)
        rq.presentation_context_definition_list = contexts
        max_len = MaximumLengthNotification()
        max_len.maximum_length_received = OUR_MAX_PDU
        impl_uid = ImplementationClassUIDNotification()
        impl_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        impl_name = ImplementationVersionNameNotification()
        impl_name.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        rq.user_information = [max_len, impl_uid, impl_name]
        pdu = A_ASSOCIATE_RQ()
        pdu.from_primitive(rq)
        self._send_iov([pdu.encode()])
        pdu_type, data = self._read_pdu()
        if pdu_type == 0x03:
            rj = A_ASSOCIATE_RJ()
            rj.decode(data)
            raise AssociationFailed(
                f"{self.called_ae} rejected the association "
                f"(result {rj.result}, source {rj.source}, reason {rj.reason_diagnostic})"
            )
        if pdu_type != 0x02:
            raise AssociationFailed(
                f"{self.called_ae} answered the association request with PDU type {pdu_type:#x}"
            )
        ac = A_ASSOCIATE_AC()
        ac.decode(data)
        primitive = ac.to_primitive()
        by_id = {2 * i + 1: a for i, (a, _ts) in enumerate(self.requested)}
        for cx in primitive.presentation_context_definition_results_list:
            if cx.result == 0x00 and cx.context_id in by_id and cx.transfer_syntax:
                self.accepted.append(
                    AcceptedContext(
                        int(cx.context_id), by_id[cx.context_id], str(cx.transfer_syntax[0])
                    )
                )
        for item in primitive.user_information:
            if isinstance(item, MaximumLengthNotification):
                self.peer_max_pdu = int(item.maximum_length_received or 0)
        self.established = True
        if not self.accepted:
            self.abort()
            raise AssociationFailed(f"{self.called_ae} accepted no presentation context")

    # -- C-STORE --------------------------------------------------------------------------
    def _fragment(self) -> int:
        # PDV item header (4 length + 1 context + 1 control) inside the PDU's max length
        if self.peer_max_pdu:  # 0 = no limit (PS3.8 §D.1)
            return max(self.peer_max_pdu - 6, 16)
        return CHUNK_BYTES

    def _pdvs(
        self, parts: list[bytes | memoryview], context_id: int, data: memoryview, last: bool
    ) -> None:
        frag = self._fragment()
        n = len(data)
        pos = 0
        while pos < n or (n == 0 and pos == 0):
            chunk = data[pos : pos + frag]
            pos += frag
            control = 0x02 if (last and pos >= n) else 0x00
            parts.append(
                struct.pack(">BBIIBB", 0x04, 0, len(chunk) + 6, len(chunk) + 2, context_id, control)
            )
            parts.append(chunk)
            if n == 0:
                break

    @staticmethod
    def _command_pdu(context_id: int, command: bytes) -> bytes:
        """One P-DATA-TF carrying a whole command set (control header 03H, PS3.8 §E.2)."""
        return (
            struct.pack(">BBIIBB", 0x04, 0, len(command) + 6, len(command) + 2, context_id, 3)
            + command
        )

    def store_file(
        self,
        context_id: int,
        command: bytes,
        fh: BinaryIO,
        offset: int,
        length: int,
    ) -> StoreResult:
        """Send a C-STORE-RQ whose data set is ``length`` bytes of ``fh`` from ``offset``.

        The command PDU and the first data chunk leave in one ``sendmsg``."""
        parts: list[bytes | memoryview] = [self._command_pdu(context_id, command)]
        frag = self._fragment()
        chunk_size = max(frag, (CHUNK_BYTES // frag) * frag) if frag < CHUNK_BYTES else frag
        fd = fh.fileno()
        remaining = length
        pos = offset
        want_size = min(chunk_size, max(length, 1))
        if len(self._sbuf) < want_size:  # reused: no allocation or page faults per instance
            self._sbuf = bytearray(want_size)
        buf = self._sbuf
        view = memoryview(buf)[:want_size]
        while True:
            want = min(want_size, remaining)
            got = 0
            while got < want:
                k = os.preadv(fd, [view[got:want]], pos + got)
                if k <= 0:
                    raise OSError(f"file shorter than indexed ({length} bytes expected)")
                got += k
            remaining -= want
            pos += want
            self._pdvs(parts, context_id, view[:want], remaining == 0)
            self._send_iov(parts)
            parts = []
            if remaining == 0:
                break
        return self._read_response()

    def store_bytes(self, context_id: int, command: bytes, dataset: bytes) -> StoreResult:
        """Send a C-STORE-RQ with an in-memory data set (a transcoded instance)."""
        parts: list[bytes | memoryview] = [self._command_pdu(context_id, command)]
        self._pdvs(parts, context_id, memoryview(dataset), True)
        self._send_iov(parts)
        return self._read_response()

    def _read_response(self) -> StoreResult:
        command = bytearray()
        while True:
            pdu_type, data = self._read_pdu()
            if pdu_type == 0x04:
                pos, end = 6, len(data)
                done = False
                while pos + 6 <= end:
                    item_len = struct.unpack_from(">I", data, pos)[0]
                    control = data[pos + 5]
                    if control & 0x01:  # command fragment; a C-STORE-RSP has no data set
                        command += data[pos + 6 : pos + 4 + item_len]
                        if control & 0x02:
                            done = True
                    pos += 4 + item_len
                if done:
                    break
            elif pdu_type == 0x07:
                self.established = False
                raise PeerAborted(f"{self.called_ae} aborted the association")
            elif pdu_type == 0x05:  # release request from the acceptor: not allowed here
                self.abort()
                raise PeerAborted(f"{self.called_ae} asked to release during a C-STORE")
            else:
                self.abort()
                raise PeerAborted(f"{self.called_ae} sent an unexpected PDU type {pdu_type:#x}")
        cmd = parse_command(bytes(command))
        field = struct.unpack("<H", cmd.get(0x0100, b"\x00\x00")[:2])[0]
        if field != C_STORE_RSP or 0x0900 not in cmd:
            self.abort()
            raise PeerAborted(f"{self.called_ae} sent a response that is not a C-STORE-RSP")
        status = struct.unpack("<H", cmd[0x0900][:2])[0]
        comment = cmd.get(0x0902, b"").decode("ascii", "replace").strip("\x00 ")
        return StoreResult(status, comment)

    # -- ending ---------------------------------------------------------------------------
    def release(self) -> None:
        """A-RELEASE-RQ, wait for the RP (PS3.8 §9.3.6), then close."""
        if self.sock is None:
            return
        try:
            if self.established:
                self._send_iov([struct.pack(">BBII", 0x05, 0, 4, 0)])
                for _ in range(8):
                    pdu_type, _data = self._read_pdu()
                    if pdu_type in (0x06, 0x07):
                        break
        except AssociationFailed:
            pass
        finally:
            self.established = False
            self.close()

    def abort(self) -> None:
        if self.sock is not None and self.established:
            with contextlib.suppress(OSError):
                self.sock.sendall(struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0, 0))
        self.established = False
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None

    def __enter__(self) -> StorageRequestor:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.release()
        else:
            self.abort()
