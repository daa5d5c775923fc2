"""Transfer syntax choice and transcoding (archive/transcode.py, SPEC B4) and the C-MOVE
sub-association's proposed contexts and C-STORE command encoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from pacsbox.archive.transcode import (
    TranscodeError,
    plan_transfer,
    transcode,
)
from pacsbox.dicom.scp.retrieve import Counts, propose_contexts
from pacsbox.dicom.storage_requestor import encode_store_rq, parse_command
from tests.helpers import PYDICOM_TEST_FILES, dataset_bytes, make_ct

EXPL, IMPL = str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)
JLS, RLE, J2KR = str(JPEGLSLossless), str(RLELossless), str(JPEG2000Lossless)


def _decode(data: bytes, ts: str) -> Dataset:
    ds = read_dataset(DicomBytesIO(data), ts == IMPL, True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(ts)
    return ds


# -- the rules ----------------------------------------------------------------------------
def test_plan_as_stored_when_accepted() -> None:
    assert plan_transfer(EXPL, [IMPL, EXPL]).as_stored
    assert plan_transfer(str(JPEG2000), [str(JPEG2000)]).as_stored


def test_plan_prefers_explicit_then_implicit_then_lossless() -> None:
    plan = plan_transfer(str(JPEG2000), [J2KR, RLE, IMPL, EXPL, JLS])
    assert not plan.as_stored
    assert plan.targets == (EXPL, IMPL, JLS, RLE, J2KR)
    assert plan_transfer(EXPL, [IMPL]).targets == (IMPL,)
    assert plan_transfer(EXPL, [RLE]).targets == (RLE,)


def test_plan_impossible_when_nothing_fits() -> None:
    plan = plan_transfer(EXPL, [str(JPEG2000)])  # lossy J2K is never a target
    assert not plan.possible
    assert not plan_transfer(EXPL, []).possible
    with pytest.raises(TranscodeError):
        transcode(Path("/nonexistent"), EXPL, ())


# -- decompression: every stored compressed syntax to the uncompressed ones ------------------
@pytest.mark.parametrize(
    "name",
    [
        "JPEG2000.dcm",  # J2K lossy stored: decoded only
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_RLE.dcm",
        "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1, colour
        "MR_small_bigendian.dcm",
        "SC_rgb_rle.dcm",
    ],
)
@pytest.mark.parametrize("target", [EXPL, IMPL])
def test_decompress_keeps_pixels_and_uid(name: str, target: str) -> None:
    path = PYDICOM_TEST_FILES / name
    original = pydicom.dcmread(path)
    stored_ts = str(original.file_meta.TransferSyntaxUID)
    plan = plan_transfer(stored_ts, [target])
    assert not plan.as_stored and plan.targets == (target,)
    ts, data = transcode(path, stored_ts, plan.targets)
    assert ts == target
    got = _decode(data, ts)
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(got.pixel_array, original.pixel_array)
    assert "PixelData" in got and got.Rows == original.Rows


# -- compression: uncompressed to every lossless syntax we can encode -----------------------
@pytest.mark.parametrize("target", [JLS, RLE, J2KR])
def test_compress_lossless_round_trips(tmp_path: Path, target: str) -> None:
    path = PYDICOM_TEST_FILES / "CT_small.dcm"
    original = pydicom.dcmread(path)
    ts, data = transcode(path, EXPL, plan_transfer(EXPL, [target]).targets)
    assert ts == target
    got = _decode(data, ts)
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(got.pixel_array, original.pixel_array)
    assert len(data) < len(dataset_bytes(path))


def test_recompress_one_lossless_syntax_into_another() -> None:
    path = PYDICOM_TEST_FILES / "MR_small_RLE.dcm"
    original = pydicom.dcmread(path)
    ts, data = transcode(path, RLE, plan_transfer(RLE, [JLS]).targets)
    assert ts == JLS
    assert np.array_equal(_decode(data, ts).pixel_array, original.pixel_array)


def test_explicit_to_implicit_without_pixels(tmp_path: Path) -> None:
    ds = make_ct()
    del ds.PixelData
    path = tmp_path / "nopix.dcm"
    ds.save_as(path, enforce_file_format=True)
    ts, data = transcode(path, EXPL, (IMPL,))
    got = _decode(data, ts)
    assert got.PatientName == "Doe^John" and got.SOPInstanceUID == ds.SOPInstanceUID
    with pytest.raises(TranscodeError, match="no pixel data"):
        transcode(path, EXPL, (JLS,))


def test_bare_data_set_file(tmp_path: Path) -> None:
    """storage_format = native: no file meta; the stored syntax comes from the index."""
    ds = make_ct()
    path = tmp_path / "bare.dcm"
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(buf, ds)
    path.write_bytes(buf.getvalue())
    ts, data = transcode(path, EXPL, (IMPL,))
    assert _decode(data, ts).SOPInstanceUID == ds.SOPInstanceUID


def test_codec_failure_falls_through_to_next_target(tmp_path: Path) -> None:
    """JPEG-LS cannot take 32-bit samples: the next target is tried."""
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / "SC_rgb_rle_32bit.dcm")
    ds.decompress(generate_instance_uid=False)
    path = tmp_path / "rgb32.dcm"
    ds.save_as(path)
    ts, data = transcode(path, EXPL, (JLS, IMPL))
    assert ts == IMPL
    assert np.array_equal(_decode(data, ts).pixel_array, ds.pixel_array)


def test_unreadable_file_is_a_transcode_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(TranscodeError):
        transcode(bad, str(JPEGLosslessSV1), (EXPL,))


def test_big_endian_source_kept_as_target_never(tmp_path: Path) -> None:
    assert plan_transfer(EXPL, [str(ExplicitVRBigEndian)]).targets == ()


# -- C-MOVE sub-association contexts ---------------------------------------------------------
def test_propose_contexts_one_syntax_each_stored_first() -> None:
    ct, mr = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
    contexts = propose_contexts([(ct, EXPL), (ct, J2KR), (mr, str(JPEG2000))])
    assert contexts[:5] == [
        (ct, [EXPL]),
        (ct, [J2KR]),
        (ct, [IMPL]),
        (mr, [str(JPEG2000)]),
        (mr, [EXPL]),
    ]
    assert (mr, [IMPL]) in contexts
    assert (ct, [JLS]) in contexts and (mr, [RLE]) in contexts
    assert len(contexts) == len({(a, tuple(t)) for a, t in contexts}) <= 128


def test_propose_contexts_stays_within_128() -> None:
    many = [(f"1.2.3.{i}", EXPL) for i in range(60)]  # 60 x (Expl, Impl) = 120 single
    contexts = propose_contexts(many)
    assert len(contexts) == 120 and all(len(ts) == 1 for _, ts in contexts)
    more = [(f"1.2.3.{i}", EXPL) for i in range(100)]
    grouped = propose_contexts(more)
    assert len(grouped) == 100 and grouped[0][1] == [EXPL, IMPL]
    assert len(propose_contexts([(f"1.2.3.{i}", EXPL) for i in range(200)])) == 128


def test_store_rq_command_set() -> None:
    cmd = parse_command(encode_store_rq(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", 0, "MOVESCU", 3))
    assert cmd[0x0100] == b"\x01\x00" and cmd[0x0110] == b"\x07\x00"
    assert cmd[0x1000] == b"1.2.3.4\x00"
    assert cmd[0x1030] == b"MOVESCU " and cmd[0x1031] == b"\x03\x00"
    assert cmd[0x0800] != b"\x01\x01"  # a data set follows
    group_length = int.from_bytes(cmd[0x0000], "little")
    raw = encode_store_rq(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")
    assert group_length > 0 and len(raw) == 12 + int.from_bytes(raw[8:12], "little")


def test_counts_bookkeeping() -> None:
    c = Counts(5)
    c.record("1", 0x0000)
    c.record("2", 0xB007)
    c.record("3", 0xA700)
    c.fail("4")
    assert (c.completed, c.warning, c.failed, c.remaining) == (1, 1, 2, 1)
    assert c.failed_uids == ["3", "4"]


def test_dataset_offset_matches_the_header_walk(tmp_path: Path) -> None:
    from pacsbox.archive.header import dataset_offset as walk
    from pacsbox.archive.transcode import dataset_offset

    files = sorted(PYDICOM_TEST_FILES.glob("*.dcm"))
    long_meta = tmp_path / "long.dcm"
    ds = make_ct()
    ds.file_meta.PrivateInformationCreatorUID = "1.2.3"
    ds.file_meta.PrivateInformation = b"x" * 6000  # meta longer than the 4 KiB head
    ds.save_as(long_meta, enforce_file_format=True)
    for path in [*files, long_meta]:
        with open(path, "rb") as fh:
            assert dataset_offset(fh) == walk(fh), path.name
    with open(long_meta, "rb") as fh:
        assert dataset_offset(fh) > 6000
