"""dicom.storage_acceptor: command set codec and PDU framing (PS3.7 §6.3, PS3.8 §9.3)."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from pydicom.filereader import read_dataset
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from pacsbox.dicom.storage_acceptor import (
    ProtocolError,
    abort_pdu,
    encode_response,
    p_data_pdu,
    parse_command,
    reject_pdu,
)


def test_response_is_a_valid_command_set() -> None:
    raw = encode_response(
        0x8001,
        7,
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.3.45",
        0xA703,
        "study is filed under another Patient ID\\x",
    )
    ds = read_dataset(BytesIO(raw), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.CommandField == 0x8001 and ds.MessageIDBeingRespondedTo == 7
    assert ds.CommandDataSetType == 0x0101 and ds.Status == 0xA703
    assert ds.AffectedSOPInstanceUID == "1.2.3.45"
    assert "\\" not in ds.ErrorComment and len(ds.ErrorComment) <= 64
    assert len(raw) % 2 == 0


def test_parse_command_from_pynetdicom_encoding() -> None:
    primitive = C_STORE()
    primitive.MessageID = 12
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    primitive.AffectedSOPInstanceUID = "1.2.3.4.5"
    primitive.Priority = 0
    msg = C_STORE_RQ()
    msg.primitive_to_message(primitive)
    raw = encode(msg.command_set, True, True)
    cmd = parse_command(raw)
    assert struct.unpack("<H", cmd[0x0100])[0] == 0x0001
    assert struct.unpack("<H", cmd[0x0110])[0] == 12
    assert cmd[0x1000].rstrip(b"\x00") == b"1.2.3.4.5"


@pytest.mark.parametrize(
    "raw", [b"\x00\x00\x00\x01\xff\xff\xff\x7f", b"\x08\x00\x16\x00\x02\x00\x00\x00ab"]
)
def test_malformed_command_sets(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_command(raw)


def test_pdu_framing() -> None:
    pdu = p_data_pdu(3, b"abcd")
    assert pdu[0] == 0x04 and struct.unpack(">I", pdu[2:6])[0] == len(pdu) - 6
    assert struct.unpack(">I", pdu[6:10])[0] == 6 and pdu[10] == 3 and pdu[11] == 0x03
    assert abort_pdu(2, 6) == b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"
    assert reject_pdu(1, 1, 3) == b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x03"


def _store_rq(message_id: int, sop_instance: str) -> bytes:
    from pacsbox.dicom.commands import cmd_element as _elem
    from pacsbox.dicom.commands import pad_ui as _pad_ui

    body = b"".join(
        (
            _elem(0x0002, _pad_ui("1.2.840.10008.5.1.4.1.1.2")),
            _elem(0x0100, struct.pack("<H", 0x0001)),
            _elem(0x0110, struct.pack("<H", message_id)),
            _elem(0x0700, struct.pack("<H", 0)),
            _elem(0x0800, struct.pack("<H", 0x0000)),
            _elem(0x1000, _pad_ui(sop_instance)),
        )
    )
    return _elem(0x0000, struct.pack("<I", len(body))) + body


def _pdu(*pdvs: tuple[int, bytes]) -> bytes:
    items = b"".join(
        struct.pack(">IBB", len(data) + 2, 1, control) + data for control, data in pdvs
    )
    return struct.pack(">BBI", 0x04, 0, len(items)) + items


def test_received_data_sets_survive_buffer_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Data sets split over PDUs, several messages in one PDU, PDUs larger than the receive
    buffer: every stored data set is exactly what was sent although the buffer is reused."""
    import os
    import socket
    import threading
    from types import SimpleNamespace

    from pacsbox.dicom import storage_acceptor as sa

    monkeypatch.setattr(sa, "ARENA_BYTES", 1000)
    stored: dict[str, bytes] = {}

    class Acceptor:
        settings = SimpleNamespace(max_pdu_size=65536, network_timeout=10)

        ingest = None  # no audit hook

        def store(self, msg, ts, sop_class, sop_instance, calling, abstract, audit):  # noqa: ANN001
            stored[sop_instance] = b"".join(bytes(c) for c in msg.chunks)
            return 0, None

    server, client = socket.socketpair()
    primitive = SimpleNamespace(calling_ae_title="SCU", called_ae_title="SCP")
    assoc = sa.StorageAssociation(server, ("local", 0), primitive, Acceptor())  # type: ignore[arg-type]
    assoc.contexts = {1: ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")}
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(assoc._loop()))
    thread.start()
    data = {f"1.2.3.{i}": os.urandom(size) for i, size in enumerate((10, 700, 2500, 333, 1))}
    uids = list(data)
    stream = [
        # one message in one PDU
        _pdu((0x03, _store_rq(1, uids[0])), (0x02, data[uids[0]])),
        # a message over three PDUs, the last one also carrying the next message entirely
        _pdu((0x03, _store_rq(2, uids[1]))),
        _pdu((0x00, data[uids[1]][:300])),
        _pdu((0x02, data[uids[1]][300:]), (0x03, _store_rq(3, uids[3])), (0x02, data[uids[3]])),
        # a PDU larger than the buffer, then a message whose PDUs need a fresh buffer
        _pdu((0x03, _store_rq(4, uids[2])), (0x00, data[uids[2]][:1800])),
        _pdu((0x00, data[uids[2]][1800:2000])),
        _pdu((0x02, data[uids[2]][2000:])),
        _pdu((0x03, _store_rq(5, uids[4])), (0x02, data[uids[4]])),
    ]
    client.sendall(b"".join(stream) + struct.pack(">BBII", 0x05, 0, 4, 0))
    client.settimeout(10)
    received = b""
    while not received.endswith(sa.RELEASE_RP):
        chunk = client.recv(65536)
        assert chunk
        received += chunk
    thread.join(10)
    client.close()
    assert result == ["released"]
    assert stored == data
    assert received.count(b"\x04\x00") >= 5  # five C-STORE responses before the release
