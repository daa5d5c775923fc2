"""The lean C-FIND responder's byte work (dicom/find_responder.py): identifiers encode to
exactly what pydicom writes, responses fragment into valid P-DATA-TF PDUs (PS3.8 §9.3.5),
command sets decode as C-FIND-RSPs (PS3.7 §9.3.2.2)."""

from __future__ import annotations

import struct

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from pacsbox.dicom.find_responder import (
    EXPLICIT_LE,
    IMPLICIT_LE,
    decode_identifier,
    encode_identifier,
    find_response_command,
    p_data,
)
from pacsbox.dicom.storage_acceptor import parse_command


def _pydicom(ds: Dataset, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def _plain() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.RetrieveAETitle = "PACSBOX"
    ds.InstanceAvailability = "ONLINE"
    ds.ModalitiesInStudy = ["CT", "MR"]
    ds.add_new(0x00080062, "UI", ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"])
    ds.add_new(0x00081030, "LO", None)
    ds.PatientName = "Doe^John"
    ds.PatientID = "ODD"
    ds.StudyInstanceUID = "1.2.3.45"
    ds.NumberOfStudyRelatedInstances = "6"
    ds.add_new(0x00201208, "IS", 17)
    ds.add_new(0x00101030, "DS", "72.5")
    ds.StudyDate = "20260101"
    return ds


def _with_sequence() -> Dataset:
    ds = _plain()
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "123", "99X"
    ds.ProcedureCodeSequence = Sequence([item])
    ds.add_new(0x00081032 + 0x10, "SQ", Sequence([]))
    return ds


def _non_ascii() -> Dataset:
    ds = _plain()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Jürgen"
    ds.StudyDescription = "Schädel nativ"
    return ds


def _long_text() -> Dataset:
    ds = _plain()
    ds.add_new(0x00324000, "LT", "x" * 1001)  # Study Comments: odd length, 2-byte length
    ds.add_new(0x0040A160, "UT", "y" * 70001)  # Text Value: UT has a 4-byte length
    return ds


@pytest.mark.parametrize("make", [_plain, _with_sequence, _non_ascii, _long_text])
@pytest.mark.parametrize("ts", [IMPLICIT_LE, EXPLICIT_LE])
def test_identifier_bytes_equal_pydicom(make, ts: str) -> None:  # noqa: ANN001
    ds = make()
    assert encode_identifier(ds, ts) == _pydicom(ds, ts == IMPLICIT_LE)


@pytest.mark.parametrize("ts", [IMPLICIT_LE, EXPLICIT_LE])
def test_decode_identifier_round_trip(ts: str) -> None:
    ds = _with_sequence()
    back = decode_identifier(_pydicom(ds, ts == IMPLICIT_LE), ts)
    assert back.PatientName == "Doe^John" and back.ModalitiesInStudy == ["CT", "MR"]
    assert back.ProcedureCodeSequence[0].CodeValue == "123"


def _parse_pdus(stream: bytes) -> list[list[tuple[int, int, bytes]]]:
    pdus, pos = [], 0
    while pos < len(stream):
        kind, _r, length = struct.unpack_from(">BBI", stream, pos)
        assert kind == 0x04
        body, pos = stream[pos + 6 : pos + 6 + length], pos + 6 + length
        items, i = [], 0
        while i < len(body):
            n = struct.unpack_from(">I", body, i)[0]
            items.append((body[i + 4], body[i + 5], body[i + 6 : i + 4 + n]))
            i += 4 + n
        pdus.append(items)
    return pdus


@pytest.mark.parametrize("max_pdu", [0, 16384, 120])
def test_p_data_fragments_within_the_peer_maximum(max_pdu: int) -> None:
    command = find_response_command(7, "1.2.840.10008.5.1.4.1.2.2.1", 0xFF00, True, None)
    data = encode_identifier(_plain(), EXPLICIT_LE)
    stream = p_data(3, command, data, max_pdu)
    pdus = _parse_pdus(stream)
    if max_pdu:
        assert all(sum(6 + len(d) for _c, _f, d in items) <= max_pdu for items in pdus)
    items = [item for pdu in pdus for item in pdu]
    assert all(cx == 3 for cx, _f, _d in items)
    assert items[0][1] == 0x03 and items[0][2] == command  # the whole command, last fragment
    fragments = items[1:]
    assert [f for _c, f, _d in fragments] == [0x00] * (len(fragments) - 1) + [0x02]
    assert b"".join(d for _c, _f, d in fragments) == data
    if max_pdu == 120:
        assert len(pdus) > 2


def test_command_sets() -> None:
    pending = parse_command(
        find_response_command(9, "1.2.840.10008.5.1.4.1.2.2.1", 0xFF00, True, None)
    )
    assert struct.unpack("<H", pending[0x0100])[0] == 0x8020
    assert struct.unpack("<H", pending[0x0120])[0] == 9
    assert struct.unpack("<H", pending[0x0800])[0] != 0x0101
    assert struct.unpack("<I", pending[0x0000])[0] == sum(
        8 + len(v) for k, v in pending.items() if k != 0x0000
    )
    failure = Dataset()
    failure.Status = 0xA900
    failure.ErrorComment = "Query/Retrieve Level (0008,0052) is missing"
    failure.OffendingElement = [0x00080052]
    final = parse_command(
        find_response_command(9, "1.2.840.10008.5.1.4.1.2.2.1", 0xA900, False, failure)
    )
    assert struct.unpack("<H", final[0x0800])[0] == 0x0101
    assert struct.unpack("<H", final[0x0900])[0] == 0xA900
    assert final[0x0901] == struct.pack("<HH", 0x0008, 0x0052)
    assert final[0x0902].rstrip(b" ").decode() == failure.ErrorComment
