"""SPEC R2: hostile input on the DICOM port never crashes the server nor escapes data_dir.

One ``pacsbox serve`` (permissive AEs, short ACSE/network time-outs) serves every test of this
module. Hostile C-STOREs are sent with pynetdicom in "chunked" mode
(``_config.STORE_SEND_CHUNKED_DATASET``): the SCU takes the command's SOP Class/Instance UIDs
and the transfer syntax from a Part-10 file's meta information and streams the bytes after it
unchanged, so any byte sequence — truncated, with absurd lengths, with path tricks in UIDs —
travels as the data set. Raw sockets carry the garbage that is not even DICOM.

The server serves storage-only associations with a lean acceptor of its own and all others
with pynetdicom; C-STORE and stall tests run on both paths ("storage-only" and "mixed" routes).

Every test ends with :func:`assert_healthy`: the server process lives, answers C-ECHO and
stores a fresh instance; every good instance stored so far by this module is still indexed
with its bytes intact; the workers' peak RSS (VmHWM) stays under 512 MB; the archive check
(``check(grace=0)`` in-process) finds nothing. The last test runs ``pacsbox check --grace 0``
through the CLI. Refusals must be a failure status of PS3.4 B.2.3 (A9xx or Cxxx; exactly C000
for UIDs with path tricks, A900 for command/data set mismatches) — never 0000 — and leave
neither an index row nor a file; garbage on the port gets an A-ABORT/A-ASSOCIATE-RJ or a
closed connection, and a stalled peer is disconnected within its ACSE/network time-out.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from sqlalchemy import select

from pacsbox.archive.check import check
from pacsbox.archive.index.writer import INSTANCE
from tests.helpers import (
    Server,
    dataset_bytes,
    free_port,
    have,
    make_ct,
    open_server_archive,
    run_dcmtk,
    server_env,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"

ACSE_TIMEOUT = 2.0
NETWORK_TIMEOUT = 4.0
#: A connection that stalls must be closed by the server within this many seconds.
STALL_DEADLINE = max(ACSE_TIMEOUT, NETWORK_TIMEOUT) + 6
#: Peak resident memory a worker may reach (they start at ~90 MB).
MAX_WORKER_HWM_KB = 512 * 1024


# -- the server and what it must keep -----------------------------------------------------
class Hostile:
    def __init__(self, server: Server, base: Path) -> None:
        self.server = server
        self.base = base
        self.good: dict[str, bytes] = {}  # SOP Instance UID -> data set bytes sent


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    base = tmp_path_factory.mktemp("hostile")
    data_dir = base / "srv" / "data"
    data_dir.mkdir(parents=True)
    port = free_port()
    env = server_env(
        data_dir,
        port,
        None,
        PACSBOX_PERMISSIVE_AES="true",
        PACSBOX_PERMISSIVE_AES_ENABLED="true",
        PACSBOX_ACSE_TIMEOUT=str(ACSE_TIMEOUT),
        PACSBOX_NETWORK_TIMEOUT=str(NETWORK_TIMEOUT),
        PACSBOX_DIMSE_TIMEOUT=str(NETWORK_TIMEOUT),
    )
    server = Server(data_dir, port, env).start()
    try:
        yield Hostile(server, base)
    finally:
        server.stop()


@pytest.fixture
def chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom sends a file's bytes after the meta as they are (no decode/re-encode)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


# -- encoding helpers ---------------------------------------------------------------------
def encode(ds: Dataset, implicit: bool = False) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, implicit
    write_dataset(buf, ds)
    return buf.getvalue()


def part10(path: Path, sop_class: str, sop_instance: str, ts: str, data: bytes) -> Path:
    """A file whose meta says (class, instance, ts) followed by ``data`` verbatim."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.999.1"
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    path.write_bytes(buf.getvalue() + data)
    return path


def tag_offset(data: bytes, group: int, element: int) -> int:
    """Offset of a top-level element's tag in a little-endian data set (first match)."""
    i = data.find(struct.pack("<HH", group, element))
    assert i >= 0, f"({group:04X},{element:04X}) not found"
    return i


# -- DICOM client helpers -----------------------------------------------------------------
#: The server serves storage/verification/C-FIND associations with its lean acceptor and
#: everything else with pynetdicom; C-STORE tests run on both paths ("mixed" also proposes a
#: C-MOVE context, which only pynetdicom serves).
ROUTES = ["storage-only", "mixed"]
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


def client(route: str = "storage-only") -> AE:
    ae = AE(ae_title="HOSTILE")
    if route == "mixed":
        ae.add_requested_context(STUDY_ROOT_MOVE)
    for sop_class in (CT, MR):
        for ts in (EXPLICIT_LE, IMPLICIT_LE):  # one context per syntax: both get accepted
            ae.add_requested_context(sop_class, ts)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def c_store(
    server: Server, what: Path | Dataset, route: str = "storage-only"
) -> tuple[int | None, str]:
    """Send one C-STORE; return (status, error comment); status None if no response."""
    assoc = client(route).associate("127.0.0.1", server.port, ae_title=server.ae_title)
    assert assoc.is_established, "association refused"
    try:
        rsp = assoc.send_c_store(what)
    finally:
        if assoc.is_established:
            assoc.release()
    if not rsp or "Status" not in rsp:
        return None, "no response (association aborted)"
    return int(rsp.Status), str(rsp.get("ErrorComment", ""))


def c_echo(server: Server) -> int | None:
    assoc = client().associate("127.0.0.1", server.port, ae_title=server.ae_title)
    assert assoc.is_established, "association refused"
    try:
        rsp = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    return int(rsp.Status) if rsp and "Status" in rsp else None


def is_failure(status: int | None) -> bool:
    """A9xx (data set does not match SOP class) or Cxxx (cannot understand), PS3.4 B.2.3."""
    return status is not None and (status & 0xFF00 == 0xA900 or status & 0xF000 == 0xC000)


# -- what the archive holds ---------------------------------------------------------------
def indexed(server: Server) -> dict[str, Path]:
    arch = open_server_archive(server)
    try:
        with arch.engine.connect() as conn:
            rows = conn.execute(select(INSTANCE.c.sop_instance_uid, INSTANCE.c.file_path)).all()
        return {uid: arch.store.root / key for uid, key in rows}
    finally:
        arch.engine.dispose()


def files_named(root: Path, uid: str) -> list[Path]:
    return [p for p in root.rglob("*") if uid in p.name]


def worker_pids(server: Server) -> list[int]:
    assert server.proc is not None
    parent = server.proc.pid
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            pids.append(int(entry))
    return pids


def peak_rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def store_good(h: Hostile) -> str:
    ds = make_ct(rows=32, cols=32, patient_id="GOOD")
    status, comment = c_store(h.server, ds)
    assert status == 0x0000, f"a good instance was refused: {status} {comment}"
    h.good[ds.SOPInstanceUID] = encode(ds)
    return ds.SOPInstanceUID


def assert_healthy(h: Hostile, cli: bool = False) -> None:
    server = h.server
    assert server.proc is not None and server.proc.poll() is None, "pacsbox serve died"
    assert c_echo(server) == 0x0000
    store_good(h)
    rows = indexed(server)
    for uid, data in h.good.items():
        assert uid in rows, f"good instance {uid} is gone"
        assert dcmread(rows[uid]).SOPInstanceUID == uid
        assert dataset_bytes(rows[uid]) == data, f"good instance {uid} changed"
    pids = worker_pids(server)
    assert pids, "no worker processes"
    for pid in pids:
        assert peak_rss_kb(pid) < MAX_WORKER_HWM_KB, f"worker {pid} peaked at {peak_rss_kb(pid)} kB"
    if cli:
        result = server.cli("check", "--grace", "0", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["status"] == "consistent", result.stdout
        assert report["orphan_files"] == report["temp_files"] == 0
        return
    arch = open_server_archive(server)  # the same check in-process (the CLI costs ~1.5 s)
    try:
        found = check(arch.ingest, grace=0)
    finally:
        arch.engine.dispose()
    assert found.problems == 0, found


def assert_not_stored(h: Hostile, uid: str) -> None:
    assert uid not in indexed(h.server), f"{uid} was indexed"
    assert not files_named(h.server.data_dir, uid), f"{uid} left a file"


# -- (a) truncated data sets --------------------------------------------------------------
TRUNCATIONS = {
    # cut inside Study Description (0008,1030), before the study/series UIDs
    "inside-a-header-element": lambda d: d[: tag_offset(d, 0x0008, 0x1030) + 8 + 10],
    # cut inside Photometric Interpretation (0028,0004), after all UIDs were read
    "after-the-uids": lambda d: d[: tag_offset(d, 0x0028, 0x0004) + 8 + 4],
    # cut in the middle of Pixel Data (7FE0,0010)
    "inside-pixel-data": lambda d: d[: tag_offset(d, 0x7FE0, 0x0010) + 12 + 1001],
    # Pixel Data element header only, its value missing entirely
    "pixel-data-value-missing": lambda d: d[: tag_offset(d, 0x7FE0, 0x0010) + 12],
}


@pytest.mark.parametrize("cut", list(TRUNCATIONS))
@pytest.mark.parametrize("route", ROUTES)
def test_truncated_data_set_is_refused(
    hostile: Hostile, chunked: None, tmp_path: Path, route: str, cut: str
):
    store_good(hostile)
    ds = make_ct(rows=64, cols=64)
    ds.StudyDescription = "A study description long enough to cut"
    data = TRUNCATIONS[cut](encode(ds))
    path = part10(tmp_path / "cut.dcm", CT, ds.SOPInstanceUID, EXPLICIT_LE, data)
    status, comment = c_store(hostile.server, path, route)
    assert is_failure(status), f"truncated data set got {status} {comment!r}"
    assert_not_stored(hostile, ds.SOPInstanceUID)
    assert_healthy(hostile)


# -- (b) huge declared element lengths ----------------------------------------------------
def _huge_implicit_lo(ds: Dataset) -> tuple[str, bytes]:
    """Implicit VR: Study Description (LO) claims 0xFFFFFFF0 bytes (before the UIDs)."""
    ds.StudyDescription = "HUGE"
    d = encode(ds, implicit=True)
    i = tag_offset(d, 0x0008, 0x1030)
    return IMPLICIT_LE, d[:i] + struct.pack("<HHI", 0x0008, 0x1030, 0xFFFFFFF0) + d[i + 8 :]


def _huge_explicit_ut(ds: Dataset) -> tuple[str, bytes]:
    """Explicit VR: a UT element claiming 0xFFFFFFF0 bytes, followed by the rest."""
    d = encode(ds)
    i = tag_offset(d, 0x0008, 0x0020)  # Study Date
    return EXPLICIT_LE, d[:i] + struct.pack("<HH2sHI", 0x0008, 0x001F, b"UT", 0, 0xFFFFFFF0) + d[i:]


def _huge_private_after_uids(ds: Dataset) -> tuple[str, bytes]:
    """Explicit VR: a private UN element after the UIDs claiming 0xFFFFFFF0 bytes."""
    d = encode(ds)
    i = tag_offset(d, 0x0028, 0x0002)
    return EXPLICIT_LE, d[:i] + struct.pack("<HH2sHI", 0x0021, 0x1010, b"UN", 0, 0xFFFFFFF0) + d[i:]


def _huge_pixel_data(ds: Dataset) -> tuple[str, bytes]:
    """Explicit VR: Pixel Data (OW) claims 0xFFFFFFF0 bytes; 8 KiB follow."""
    d = encode(ds)
    i = tag_offset(d, 0x7FE0, 0x0010)
    return EXPLICIT_LE, d[:i] + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 0xFFFFFFF0) + d[
        i + 12 :
    ]


HUGE = {
    "implicit-LO-before-uids": _huge_implicit_lo,
    "explicit-UT": _huge_explicit_ut,
    "private-UN-after-uids": _huge_private_after_uids,
    "pixel-data": _huge_pixel_data,
}


@pytest.mark.parametrize("variant", list(HUGE))
@pytest.mark.parametrize("route", ROUTES)
def test_huge_declared_length_is_refused(
    hostile: Hostile, chunked: None, tmp_path: Path, route: str, variant: str
):
    store_good(hostile)
    ds = make_ct(rows=64, cols=64)
    ts, data = HUGE[variant](ds)
    path = part10(tmp_path / "huge.dcm", CT, ds.SOPInstanceUID, ts, data)
    status, comment = c_store(hostile.server, path, route)
    assert is_failure(status), f"data set with a huge element length got {status} {comment!r}"
    assert_not_stored(hostile, ds.SOPInstanceUID)
    assert_healthy(hostile)  # includes the workers' peak RSS


# -- (c) garbage on the DICOM port --------------------------------------------------------
def associate_rq_fixed(called: bytes = b"PACSBOX", calling: bytes = b"GARBAGE") -> bytes:
    """The fixed part of an A-ASSOCIATE-RQ (PS3.8 §9.3.2) after type/length."""
    return b"\x00\x01\x00\x00" + called.ljust(16) + calling.ljust(16) + b"\x00" * 32


def pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body) if length is None else length) + body


def _random_bytes() -> bytes:
    rng = random.Random(20261122)
    return b"\x55" + rng.randbytes(4095)  # 0x55 is no PDU type


def _absurd_items() -> bytes:
    # consistent PDU length, but the application context item claims 65535 bytes and a
    # presentation context item claims more than the PDU holds
    items = b"\x10\x00\xff\xff" + b"1.2.840.10008.3.1.1.1" + b"\x20\x00\xff\xf0\x01\x00\x00\x00"
    return pdu(0x01, associate_rq_fixed() + items)


GARBAGE = {
    "random-bytes": _random_bytes,
    "associate-rq-absurd-item-lengths": _absurd_items,
    "associate-rq-claiming-4GB-then-close": lambda: pdu(0x01, associate_rq_fixed(), 0xFFFFFFFF),
    "p-data-claiming-4GB-then-close": lambda: pdu(0x04, b"\x00" * 64, 0xFFFFFFF0),
    "a-abort-before-association": lambda: pdu(0x07, b"\x00\x00\x00\x00"),
    "release-rq-before-association": lambda: pdu(0x05, b"\x00\x00\x00\x00"),
}


def _drain(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """Read what the server sends for up to ``seconds``; (bytes, closed by the server?)."""
    sock.settimeout(0.2)
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return got, True
        if not chunk:
            return got, True
        got += chunk
    return got, False


def storescu_ok(h: Hostile, tmp_path: Path) -> None:
    ds = make_ct(rows=32, cols=32, patient_id="AFTERGARBAGE")
    path = tmp_path / "after.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = run_dcmtk(
        ["storescu", "-v", "-aet", "AFTERGARBAGE", "-aec", h.server.ae_title, "127.0.0.1"]
        + [str(h.server.port), str(path)],
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Received Store Response (Success)" in result.stderr, result.stderr[-2000:]
    h.good[ds.SOPInstanceUID] = dataset_bytes(path)


@pytest.mark.skipif(not have("storescu"), reason="DCMTK storescu is not installed")
@pytest.mark.parametrize("variant", list(GARBAGE))
def test_garbage_on_the_port(hostile: Hostile, tmp_path: Path, variant: str):
    """The peer gets an A-ABORT (or A-ASSOCIATE-RJ) or a closed connection; nothing else."""
    store_good(hostile)
    payload = GARBAGE[variant]()
    with socket.create_connection(("127.0.0.1", hostile.server.port), timeout=5) as sock:
        sock.sendall(payload)
        if variant.endswith("then-close"):
            sock.shutdown(socket.SHUT_WR)
        got, _closed = _drain(sock, 3)
    # whatever came back is an A-ABORT (07) or an A-ASSOCIATE-RJ (03), never an accept
    assert got[:1] in (b"", b"\x07", b"\x03"), got[:32]
    storescu_ok(hostile, tmp_path)
    assert_healthy(hostile)


STALLS = {
    "silent-peer": b"",
    "half-an-associate-rq": pdu(0x01, associate_rq_fixed(), 68 + 200),
    "associate-rq-claiming-4GB": pdu(0x01, associate_rq_fixed(), 0xFFFFFFFF),
    "p-data-claiming-4GB": pdu(0x04, b"\x00" * 64, 0xFFFFFFF0),
    "random-bytes": _random_bytes(),
}


@pytest.mark.parametrize("variant", list(STALLS))
def test_stalled_peer_is_disconnected(hostile: Hostile, variant: str):
    """R2/R4: a peer that sends garbage or a partial PDU and then stalls must not hold a
    connection (an association slot and two threads) forever: the server closes it within
    its ACSE/network time-out."""
    with socket.create_connection(("127.0.0.1", hostile.server.port), timeout=5) as sock:
        if STALLS[variant]:
            sock.sendall(STALLS[variant])
        started = time.monotonic()
        _got, closed = _drain(sock, STALL_DEADLINE)
    assert closed, f"connection still open after {STALL_DEADLINE:.0f} s"
    assert time.monotonic() - started < STALL_DEADLINE
    assert_healthy(hostile)


def associate_rq(route: str) -> bytes:
    """A well-formed A-ASSOCIATE-RQ (PS3.8 §9.3.2) proposing CT Image Storage (and, for the
    "mixed" route, Study Root C-MOVE; for "find", Study Root C-FIND as context 3) in Implicit
    VR Little Endian."""

    def item(kind: int, body: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(body)) + body

    def context(cx_id: int, abstract: str) -> bytes:
        return item(
            0x20,
            bytes([cx_id, 0, 0, 0])
            + item(0x30, abstract.encode())
            + item(0x40, b"1.2.840.10008.1.2"),
        )

    body = associate_rq_fixed(calling=b"STALLER") + item(0x10, b"1.2.840.10008.3.1.1.1")
    body += context(1, CT)
    if route == "mixed":
        body += context(3, STUDY_ROOT_MOVE)
    elif route == "find":
        body += context(3, STUDY_ROOT_FIND)
    user = item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.826.0.1.3680043.10.999.1")
    return pdu(0x01, body + item(0x50, user))


def read_pdu(sock: socket.socket, timeout: float = 10) -> tuple[int, bytes]:
    sock.settimeout(timeout)
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        assert chunk, "connection closed"
        head += chunk
    kind, _, length = struct.unpack(">BBI", head)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk, "connection closed"
        body += chunk
    return kind, body


MID_ASSOCIATION_STALLS = {
    "silent": b"",
    "p-data-claiming-4GB": pdu(0x04, b"\x00" * 64, 0xFFFFFFF0),
    "half-a-p-data": pdu(0x04, b"\x00\x00\x00\x40\x01\x03" + b"\x00" * 20, 6 + 0x40),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("variant", list(MID_ASSOCIATION_STALLS))
def test_stalled_association_is_disconnected(hostile: Hostile, route: str, variant: str):
    """R4: a peer that goes quiet inside an established association (cable pulled, hung
    modality, a PDU that never completes) is dropped after the network/DIMSE time-out."""
    with socket.create_connection(("127.0.0.1", hostile.server.port), timeout=5) as sock:
        sock.sendall(associate_rq(route))
        kind, _body = read_pdu(sock)
        assert kind == 0x02, f"association not accepted (PDU type {kind:#04x})"
        if MID_ASSOCIATION_STALLS[variant]:
            sock.sendall(MID_ASSOCIATION_STALLS[variant])
        started = time.monotonic()
        _got, closed = _drain(sock, STALL_DEADLINE)
    assert closed, f"association still open after {STALL_DEADLINE:.0f} s"
    assert time.monotonic() - started < STALL_DEADLINE
    assert_healthy(hostile)


# -- C-FIND on the lean acceptor: bad identifiers, protocol violations ---------------------
def _find_rq(message_id: int) -> bytes:
    from pacsbox.dicom.commands import cmd_element, command_set, pad_ui

    return command_set(
        [
            cmd_element(0x0002, pad_ui(STUDY_ROOT_FIND)),
            cmd_element(0x0100, struct.pack("<H", 0x0020)),
            cmd_element(0x0110, struct.pack("<H", message_id)),
            cmd_element(0x0700, struct.pack("<H", 0)),
            cmd_element(0x0800, struct.pack("<H", 0x0000)),
        ]
    )


def _pdv(cx: int, control: int, data: bytes) -> bytes:
    return struct.pack(">IBB", len(data) + 2, cx, control) + data


def _find_status(body: bytes) -> int:
    """Status (0000,0900) of the C-FIND-RSP command set in one P-DATA-TF body."""
    from pacsbox.dicom.storage_acceptor import parse_command

    length = struct.unpack(">I", body[:4])[0]
    assert body[5] & 0x01, "not a command PDV"
    return struct.unpack("<H", parse_command(body[6 : 4 + length])[0x0900])[0]


FIND_IDENTIFIERS = {
    # an element claiming more bytes than the identifier holds
    "overlong-element": struct.pack("<HHI", 0x0008, 0x0052, 0xFFFF) + b"STUDY ",
    "random-bytes": bytes(range(7, 250, 3)),
    # no Query/Retrieve Level: A900 with Offending Element
    "no-level": struct.pack("<HHI", 0x0010, 0x0020, 0),
}


@pytest.mark.parametrize("variant", list(FIND_IDENTIFIERS))
def test_bad_find_identifier_gets_a_failure_status(hostile: Hostile, variant: str):
    """PS3.4 §C.4.1.1.4: an identifier that cannot be decoded or does not fit the model gets
    a failure status (A900 / C000) on the lean path; the association goes on (release)."""
    with socket.create_connection(("127.0.0.1", hostile.server.port), timeout=10) as sock:
        sock.sendall(associate_rq("find"))
        kind, _ = read_pdu(sock)
        assert kind == 0x02
        body = _pdv(3, 0x03, _find_rq(5)) + _pdv(3, 0x02, FIND_IDENTIFIERS[variant])
        sock.sendall(pdu(0x04, body))
        kind, rsp = read_pdu(sock)
        assert kind == 0x04
        status = _find_status(rsp)
        assert status & 0xFF00 == 0xA900 or status & 0xF000 == 0xC000, hex(status)
        sock.sendall(pdu(0x05, b"\x00" * 4))
        kind, _ = read_pdu(sock)
        assert kind == 0x06  # A-RELEASE-RP
    assert_healthy(hostile)


def test_request_during_a_find_aborts(hostile: Hostile):
    """PS3.7 §9.1.2 / PS3.8: without a negotiated asynchronous window, a second request while
    a C-FIND is being answered is a protocol violation: A-ABORT, the server keeps serving."""
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    store_good(hostile)  # at least one match: the poll between matches sees the request
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE"
    ident.SOPInstanceUID = ""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ident)
    request = pdu(0x04, _pdv(3, 0x03, _find_rq(1)) + _pdv(3, 0x02, fp.getvalue()))
    with socket.create_connection(("127.0.0.1", hostile.server.port), timeout=10) as sock:
        sock.sendall(associate_rq("find"))
        assert read_pdu(sock)[0] == 0x02
        sock.sendall(request + pdu(0x04, _pdv(3, 0x03, _find_rq(2))))  # no wait: violation
        got, closed = _drain(sock, 10)
    assert closed
    assert b"\x07\x00\x00\x00\x00\x04\x00\x00\x02" in got, got[-64:]  # A-ABORT by the provider
    assert_healthy(hostile)


# -- (d) path tricks in UIDs --------------------------------------------------------------
PATH_TRICKS = {
    "dotdot-sop-and-study": ("../../x", "../../../etc", None),
    "absolute-sop": ("/tmp/x", None, None),
    "uid-then-dotdot": ("1.2.3/../../../../x", None, None),
    "dotdot-series": (None, None, ".."),
}


def _snapshot(root: Path, exclude: Path) -> set[Path]:
    return {p for p in root.rglob("*") if exclude not in p.parents and p != exclude}


@pytest.mark.parametrize("variant", list(PATH_TRICKS))
@pytest.mark.parametrize("route", ROUTES)
def test_path_tricks_in_uids(
    hostile: Hostile, chunked: None, tmp_path: Path, route: str, variant: str
):
    store_good(hostile)
    sop, study, series = PATH_TRICKS[variant]
    ds = make_ct(rows=16, cols=16)
    if sop:
        ds.SOPInstanceUID = sop
    if study:
        ds.StudyInstanceUID = study
    if series:
        ds.SeriesInstanceUID = series
    path = part10(tmp_path / "trick.dcm", CT, str(ds.SOPInstanceUID), EXPLICIT_LE, encode(ds))

    data_dir = hostile.server.data_dir
    # The server's own temp tree (data_dir's parents up to it) and this test's tmp dir; the
    # session root is shared with the other xdist worker, so it cannot be compared.
    roots = (hostile.base, tmp_path)
    before = {p for r in roots for p in _snapshot(r, data_dir)}
    folders = {Path.cwd(), Path("/"), Path("/tmp"), *data_dir.parents, *(data_dir / "x").parents}
    watched = {f / n for f in folders for n in ("x", "x.dcm")}
    watched = {p for p in watched if not p.exists()}  # must not appear
    status, comment = c_store(hostile.server, path, route)
    assert status == 0xC000, f"path trick {variant} got {status} {comment!r}"

    after = {p for r in roots for p in _snapshot(r, data_dir)}
    assert after == before, "files appeared outside data_dir"
    for candidate in watched:
        assert not candidate.exists(), f"{candidate} was written"
    storage = data_dir / "storage"
    for p in storage.rglob("*"):
        rel = p.relative_to(storage).as_posix()
        assert re.fullmatch(r"[0-9.]+(/[0-9.]+(/[0-9.]+\.dcm)?)?", rel), f"odd path {rel}"
    assert_healthy(hostile)


# -- (e) command and data set disagree ----------------------------------------------------
@pytest.mark.parametrize("route", ROUTES)
def test_sop_instance_uid_mismatch_is_a900(
    hostile: Hostile, chunked: None, tmp_path: Path, route: str
):
    store_good(hostile)
    ds = make_ct(rows=16, cols=16)
    other = generate_uid()
    path = part10(tmp_path / "mismatch.dcm", CT, other, EXPLICIT_LE, encode(ds))
    status, comment = c_store(hostile.server, path, route)
    assert status == 0xA900, f"got {status} {comment!r}"
    assert_not_stored(hostile, ds.SOPInstanceUID)
    assert_not_stored(hostile, other)
    assert_healthy(hostile)


@pytest.mark.parametrize("route", ROUTES)
def test_sop_class_uid_mismatch_is_a900(
    hostile: Hostile, chunked: None, tmp_path: Path, route: str
):
    store_good(hostile)
    ds = make_ct(rows=16, cols=16)  # a CT data set sent as MR Image Storage
    path = part10(tmp_path / "class.dcm", MR, ds.SOPInstanceUID, EXPLICIT_LE, encode(ds))
    status, comment = c_store(hostile.server, path, route)
    assert status == 0xA900, f"got {status} {comment!r}"
    assert_not_stored(hostile, ds.SOPInstanceUID)
    assert_healthy(hostile)


def test_archive_intact_after_all_hostile_input(hostile: Hostile):
    """Last: everything good stored by this module is still there and the index is clean."""
    assert_healthy(hostile, cli=True)
    assert len(hostile.good) >= 2
