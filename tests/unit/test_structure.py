"""archive.structure: a data set must end where its last element ends (SPEC R2)."""

from __future__ import annotations

import zlib

import pytest
from pydicom import dcmread

from pacsbox.archive.header import dataset_offset
from pacsbox.archive.structure import Truncated, check_complete
from tests.helpers import PYDICOM_TEST_FILES

BROKEN = {"MR_truncated.dcm", "rtplan_truncated.dcm"}


def _files() -> list:
    out = []
    for path in sorted(PYDICOM_TEST_FILES.glob("*.dcm")):
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        ts = str(ds.file_meta.get("TransferSyntaxUID", "")) if ds.file_meta else ""
        if ts:
            out.append((path, ts))
    return out


@pytest.mark.parametrize(("path", "ts"), _files(), ids=lambda v: getattr(v, "name", ""))
def test_complete_files_pass_and_cuts_fail(path, ts) -> None:
    with open(path, "rb") as fh:
        fh.seek(dataset_offset(fh))
        raw = fh.read()
    if ts == "1.2.840.10008.1.2.1.99":
        raw, ts = zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw), "1.2.840.10008.1.2.1"
    if path.name in BROKEN:
        with pytest.raises(Truncated):
            check_complete([raw], len(raw), ts)
        return
    check_complete([raw], len(raw), ts)
    # the same bytes in uneven fragments, and with zero padding
    pieces = [raw[i : i + 7] for i in range(0, len(raw), 7)]
    check_complete(pieces, len(raw), ts)
    check_complete([raw, bytes(16)], len(raw) + 16, ts)
    for cut in (len(raw) - 1, len(raw) - 3):
        with pytest.raises(Truncated):
            check_complete([raw[:cut]], cut, ts)


def test_huge_declared_length() -> None:
    raw = b"\x10\x00\x10\x00PN\x10\x00Doe^John" + b"\x10\x00\x20\x00LO\xf0\xff" + b"x" * 8
    with pytest.raises(Truncated):
        check_complete([raw], len(raw), "1.2.840.10008.1.2.1")
