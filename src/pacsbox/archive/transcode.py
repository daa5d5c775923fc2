"""Transfer syntax choice and transcoding for outgoing instances (SPEC B4).

PS3.4 §B.4.1 / PS3.5 §10: an instance may be sent in any transfer syntax the receiver accepted
for its SOP class, provided the conversion is lossless (or the original was already lossy and
is only decoded). The rules, in order:

1. The stored transfer syntax is accepted → send the stored data set bytes unchanged
   (``TransferPlan.as_stored``; no decode, no re-encode, byte-identical).
2. Otherwise Explicit VR Little Endian, then Implicit VR Little Endian: decompress the pixel
   data if it is compressed (PS3.5 §8.2), or only re-encode the elements when it is not.
3. Otherwise a lossless compressed syntax the receiver accepted, in the order JPEG-LS
   Lossless, RLE Lossless, JPEG 2000 Lossless (PS3.5 §8.2.3, §8.2.2, §8.2.4), encoded with
   pydicom's codec plugins (pyjpegls, pydicom/pylibjpeg-rle, pylibjpeg-openjpeg).
4. Nothing fits → TranscodeError (the sub-operation fails; the rest still goes).

The SOP Instance UID never changes: the pixel values are the same (``decompress`` /
``compress`` with ``generate_instance_uid=False``; see notes "Gotchas").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"

#: Transfer syntaxes whose pixel data is not compressed (native encoding, PS3.5 §8.1).
NATIVE_SYNTAXES = frozenset({EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED_LE})
#: Uncompressed syntaxes we can write, in order of preference.
UNCOMPRESSED_TARGETS: tuple[str, ...] = (EXPLICIT_LE, IMPLICIT_LE)
#: Lossless compressed syntaxes we can write, in order of preference.
LOSSLESS_TARGETS: tuple[str, ...] = (JPEG_LS_LOSSLESS, RLE_LOSSLESS, JPEG_2000_LOSSLESS)
_PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


class TranscodeError(Exception):
    """No accepted transfer syntax can carry the instance, or conversion failed."""


@dataclass(frozen=True)
class TransferPlan:
    """How to send one instance: as stored, or converted to one of ``targets`` (in order)."""

    as_stored: bool
    targets: tuple[str, ...] = ()

    @property
    def possible(self) -> bool:
        return self.as_stored or bool(self.targets)


def plan_transfer(stored_ts: str, accepted: Sequence[str]) -> TransferPlan:
    """Choose how to send an instance stored in ``stored_ts`` to a peer that accepted
    ``accepted`` for its SOP class (rules 1–4 of the module docstring)."""
    accepted_set = {str(ts) for ts in accepted}
    if stored_ts in accepted_set:
        return TransferPlan(True)
    targets = [ts for ts in UNCOMPRESSED_TARGETS if ts in accepted_set]
    targets += [ts for ts in LOSSLESS_TARGETS if ts in accepted_set and can_encode(ts)]
    if stored_ts not in NATIVE_SYNTAXES and not can_decode(stored_ts):
        return TransferPlan(False, ())
    return TransferPlan(False, tuple(targets))


def can_decode(ts: str) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(UID(ts)).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_encode(ts: str) -> bool:
    from pydicom.pixels import get_encoder

    try:
        return bool(get_encoder(UID(ts)).is_available)
    except (NotImplementedError, ValueError):
        return False


_LONG_VRS = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UC", b"UR", b"UT"})


def dataset_offset(fh: BinaryIO) -> int:
    """Where the data set starts: after preamble + ``DICM`` + group 0002 (PS3.10 §7.1), or 0
    for a bare data set. One read of the file head; the element walk (not the group length,
    which some writers get wrong) happens in memory."""
    head = os.pread(fh.fileno(), 4096, 0)
    if len(head) < 132 or head[128:132] != b"DICM":
        return 0
    pos = 132
    while pos + 8 <= len(head):
        if int.from_bytes(head[pos : pos + 2], "little") != 0x0002:
            return pos
        if head[pos + 4 : pos + 6] in _LONG_VRS:
            if pos + 12 > len(head):
                break
            pos += 12 + int.from_bytes(head[pos + 8 : pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(head[pos + 6 : pos + 8], "little")
    if pos >= len(head) and len(head) < 4096:
        return min(pos, len(head))  # the file ends inside / right after the meta
    from pacsbox.archive.header import dataset_offset as walk  # a meta longer than 4 KiB

    return walk(fh)


def read_instance(path: Path, stored_ts: str) -> Dataset:
    """Read a stored instance completely (Part-10 with meta, or a bare data set)."""
    ds = dcmread(os.fspath(path), force=True)
    if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
        raise TranscodeError(f"{path.name} is not a DICOM instance")
    if not ds.file_meta or "TransferSyntaxUID" not in ds.file_meta:
        from pydicom.dataset import FileMetaDataset

        meta = FileMetaDataset()
        meta.TransferSyntaxUID = UID(stored_ts)
        ds.file_meta = meta
    return ds


def encode_dataset(ds: Dataset, transfer_syntax: str) -> bytes:
    """The data set (no file meta) encoded in an uncompressed-layout syntax (PS3.5 §7)."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = transfer_syntax == IMPLICIT_LE
    write_dataset(fp, ds)
    return fp.getvalue()


def _has_pixels(ds: Dataset) -> bool:
    return any(tag in ds for tag in _PIXEL_DATA_TAGS)


def _to_native(ds: Dataset, stored_ts: str) -> None:
    """Leave ``ds`` with native (uncompressed, little endian) pixel data, same UIDs."""
    if not _has_pixels(ds):
        return
    if stored_ts not in NATIVE_SYNTAXES:
        ds.decompress(generate_instance_uid=False)  # as_rgb=True: see notes "Gotchas"
    elif stored_ts == EXPLICIT_BE and 0x7FE00010 in ds and int(ds.get("BitsAllocated", 8)) > 8:
        # OW pixel data read from big endian keeps its byte order: swap through numpy
        arr = ds.pixel_array
        ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OW"


def transcode(path: Path, stored_ts: str, targets: Sequence[str]) -> tuple[str, bytes]:
    """Convert a stored instance to the first of ``targets`` that works.

    Returns (transfer syntax UID, data set bytes). Memory: one decoded instance.
    """
    if not targets:
        raise TranscodeError(f"no accepted transfer syntax can carry {UID(stored_ts).name}")
    try:
        ds = read_instance(path, stored_ts)
    except Exception as exc:
        raise TranscodeError(f"cannot read {path.name}: {exc}") from exc
    errors: list[str] = []
    try:
        _to_native(ds, stored_ts)
    except Exception as exc:
        raise TranscodeError(f"cannot decode {UID(stored_ts).name}: {exc}") from exc
    for target in targets:
        try:
            if target in UNCOMPRESSED_TARGETS:
                ds.file_meta.TransferSyntaxUID = UID(target)
                return target, encode_dataset(ds, target)
            if not _has_pixels(ds) or 0x7FE00010 not in ds:
                errors.append(f"{UID(target).name}: no pixel data to compress")
                continue
            work = ds.copy()
            work.compress(UID(target), generate_instance_uid=False)
            return target, encode_dataset(work, EXPLICIT_LE)
        except Exception as exc:  # codec refused this image (bit depth, colour, ...)
            errors.append(f"{UID(target).name}: {exc}")
    raise TranscodeError("; ".join(errors) or "no target transfer syntax")
