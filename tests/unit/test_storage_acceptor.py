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
