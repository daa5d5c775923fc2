"""archive.header: index attributes read from data sets in every encoding, never pixels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pacsbox.archive.header import (
    HeaderError,
    dataset_offset,
    read_header_bytes,
    read_part10,
)
from tests.helpers import PYDICOM_TEST_FILES


@pytest.mark.parametrize(
    ("name", "ts"),
    [
        ("CT_small.dcm", "1.2.840.10008.1.2.1"),
        ("MR_small_implicit.dcm", "1.2.840.10008.1.2"),
        ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),
        ("image_dfl.dcm", "1.2.840.10008.1.2.1.99"),
        ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),
        ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),
    ],
)
def test_every_encoding(name: str, ts: str) -> None:
    path = PYDICOM_TEST_FILES / name
    info = read_part10(path)
    assert info.transfer_syntax_uid == ts
    with open(path, "rb") as fh:
        offset = dataset_offset(fh)
        fh.seek(offset)
        raw = fh.read()
    hdr = read_header_bytes(raw, ts)
    assert hdr.sop_instance_uid == info.header.sop_instance_uid
    assert hdr.study_instance_uid and hdr.series_instance_uid and hdr.sop_class_uid
    model = json.loads(hdr.attributes_json)
    assert "7FE00010" not in model
    assert model["00080018"]["Value"] == [hdr.sop_instance_uid]


def test_character_sets() -> None:
    charset_dir = PYDICOM_TEST_FILES.parent / "charset_files"
    hdr = read_part10(charset_dir / "chrH31.dcm").header  # ISO 2022 IR 87 (Japanese)
    assert "山田" in hdr.patient["patient_name"]
    hdr = read_part10(charset_dir / "chrFren.dcm").header  # ISO_IR 100
    assert "Buc" in hdr.patient["patient_name"]


def test_garbage_raises(tmp_path: Path) -> None:
    with pytest.raises(HeaderError):
        read_header_bytes(b"\x08\x00\x18\x00UI\xf0\xff" + b"1.2", "1.2.840.10008.1.2.1")
    with pytest.raises(HeaderError):
        read_header_bytes(b"not deflate data", "1.2.840.10008.1.2.1.99")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 10)
    with pytest.raises(HeaderError):
        read_part10(junk)
