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


def _bare_datasets() -> list[tuple[Path, str]]:
    out = []
    folders = (PYDICOM_TEST_FILES, PYDICOM_TEST_FILES.parent / "charset_files")
    for path in sorted(p for folder in folders for p in folder.iterdir() if p.is_file()):
        try:
            info = read_part10(path)
        except HeaderError:
            continue
        if info.has_meta and info.transfer_syntax_uid != "1.2.840.10008.1.2.1.99":
            out.append((path, info.transfer_syntax_uid))
    return out


@pytest.mark.parametrize(("path", "ts"), _bare_datasets(), ids=lambda v: getattr(v, "name", ""))
def test_raw_reader_builds_what_pydicom_builds(path: Path, ts: str) -> None:
    """The element reader of the receive path gives pydicom's read_dataset result (or
    declines), for whole data sets and for prefixes cut anywhere in the header."""
    import io

    from pydicom.filereader import read_dataset

    from pacsbox.archive.header import _complete, _read_raw_until_pixels

    with open(path, "rb") as fh:
        fh.seek(dataset_offset(fh))
        raw = fh.read()
    implicit = ts == "1.2.840.10008.1.2"
    little = ts != "1.2.840.10008.1.2.2"
    if not implicit and little and ts != "1.2.840.10008.1.2.1":
        ts = "1.2.840.10008.1.2.1"  # compressed pixel data: an explicit VR LE data set
    cuts = sorted({len(raw), *range(0, min(len(raw), 3000), 37)})
    used = 0
    for cut in cuts:
        data = raw[:cut]
        fast = _read_raw_until_pixels(data, implicit, little)
        if fast is None:
            continue
        used += 1
        reached = []

        def stop(tag, vr, length, reached=reached) -> bool:  # noqa: ANN001
            if tag >= 0x7FE00010:
                reached.append(True)
                return True
            return False

        ref = read_dataset(io.BytesIO(data), implicit, little, stop_when=stop)
        ds, fast_reached, complete = fast
        assert fast_reached == bool(reached), cut
        assert complete == _complete(ref), cut
        assert dict(ds._dict) == dict(ref._dict), cut
        assert list(ds._dict) == list(ref._dict), cut
        assert ds.original_encoding == ref.original_encoding
        assert ds.original_character_set == ref.original_character_set
    if path.name in ("CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"):
        assert used == len(cuts)  # the common encodings never fall back to pydicom
