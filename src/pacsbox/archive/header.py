"""Read what the index needs from an encoded data set, stopping before Pixel Data.

Input is the data set exactly as received (PS3.5 §7, encoded in the negotiated transfer
syntax) or a Part-10 file (PS3.10 §7). Nothing after (7FE0,0010) is parsed and pixel data is
never decoded. The result carries the index columns and the DICOM JSON model (PS3.18 §F.2) of
the non-bulk top-level attributes.
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import dcmread, read_dataset
from pydicom.tag import Tag

DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
PIXEL_DATA = Tag(0x7FE0, 0x0010)
#: Values longer than this are left out of the stored JSON (they are bulk data).
BULK_THRESHOLD = 1024

pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


class HeaderError(ValueError):
    """The bytes are not a DICOM data set we can index (maps to C000 / A900)."""


def _stop_at_pixels(tag: Any, vr: Any, length: Any) -> bool:
    return tag >= PIXEL_DATA


def _text(ds: Dataset, keyword: str, maxlen: int = 64) -> str:
    value = ds.get(keyword)
    if value is None or value == "":
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return str(value).strip()[:maxlen]


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        if type(value).__name__ == "MultiValue":
            value = value[0]
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass
class InstanceHeader:
    """Index attributes of one instance (names follow the DICOM keywords)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient: dict[str, str] = field(default_factory=dict)
    study: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    instance: dict[str, Any] = field(default_factory=dict)
    specific_character_set: str = ""
    attributes_json: str = "{}"


def _json_model(ds: Dataset) -> str:
    def bulk(_elem: Any) -> str:
        return ""  # a BulkDataURI is added by WADO-RS when metadata is served

    try:
        model = ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=bulk)
    except Exception:  # a malformed element must not stop indexing; keep what converts
        model = {}
        for elem in ds:
            try:
                sub = Dataset()
                sub.add(elem)
                model.update(sub.to_json_dict(BULK_THRESHOLD, bulk))
            except Exception:
                continue
    # Drop bulk placeholders: metadata consumers get BulkDataURIs from WADO-RS.
    for value in model.values():
        if value.get("BulkDataURI") == "":
            del value["BulkDataURI"]
    return json.dumps(model, separators=(",", ":"), ensure_ascii=False)


def header_from_dataset(ds: Dataset) -> InstanceHeader:
    """Map a (partially read) data set to index attributes; raise HeaderError if unusable."""
    try:
        charset = ds.get("SpecificCharacterSet", "")
        charset = "\\".join(charset) if not isinstance(charset, str) else charset
        hdr = InstanceHeader(
            sop_class_uid=_text(ds, "SOPClassUID"),
            sop_instance_uid=_text(ds, "SOPInstanceUID"),
            study_instance_uid=_text(ds, "StudyInstanceUID"),
            series_instance_uid=_text(ds, "SeriesInstanceUID"),
            specific_character_set=charset,
        )
        hdr.patient = {
            "patient_id": _text(ds, "PatientID"),
            "issuer_of_patient_id": _text(ds, "IssuerOfPatientID"),
            "patient_name": _text(ds, "PatientName", 324),
            "patient_birth_date": _text(ds, "PatientBirthDate", 8),
            "patient_birth_time": _text(ds, "PatientBirthTime", 16),
            "patient_sex": _text(ds, "PatientSex", 16),
        }
        hdr.study = {
            "study_date": _text(ds, "StudyDate", 8),
            "study_time": _text(ds, "StudyTime", 16),
            "accession_number": _text(ds, "AccessionNumber"),
            "study_id": _text(ds, "StudyID"),
            "study_description": _text(ds, "StudyDescription", 256),
            "referring_physician_name": _text(ds, "ReferringPhysicianName", 324),
            "patient_age": _text(ds, "PatientAge", 8),
            "patient_size": _text(ds, "PatientSize", 16),
            "patient_weight": _text(ds, "PatientWeight", 16),
            "institution_name": _text(ds, "InstitutionName", 128),
        }
        hdr.series = {
            "modality": _text(ds, "Modality", 16),
            "series_number": _int(ds, "SeriesNumber"),
            "series_date": _text(ds, "SeriesDate", 8),
            "series_time": _text(ds, "SeriesTime", 16),
            "series_description": _text(ds, "SeriesDescription", 256),
            "body_part_examined": _text(ds, "BodyPartExamined"),
            "station_name": _text(ds, "StationName"),
            "protocol_name": _text(ds, "ProtocolName"),
            "performed_procedure_step_start_date": _text(ds, "PerformedProcedureStepStartDate", 8),
            "performed_procedure_step_start_time": _text(ds, "PerformedProcedureStepStartTime", 16),
        }
        hdr.instance = {
            "instance_number": _int(ds, "InstanceNumber"),
            "instance_creation_date": _text(ds, "InstanceCreationDate", 8),
            "instance_creation_time": _text(ds, "InstanceCreationTime", 16),
            "content_date": _text(ds, "ContentDate", 8),
            "content_time": _text(ds, "ContentTime", 16),
            "rows": _int(ds, "Rows"),
            "columns": _int(ds, "Columns"),
            "samples_per_pixel": _int(ds, "SamplesPerPixel"),
            "bits_allocated": _int(ds, "BitsAllocated"),
            "bits_stored": _int(ds, "BitsStored"),
            "pixel_representation": _int(ds, "PixelRepresentation"),
            "photometric_interpretation": _text(ds, "PhotometricInterpretation", 16),
            "number_of_frames": _int(ds, "NumberOfFrames"),
        }
        hdr.attributes_json = _json_model(ds)
    except HeaderError:
        raise
    except Exception as exc:  # any decode problem in an index attribute
        raise HeaderError(f"cannot read data set attributes: {exc}") from exc
    return hdr


def read_dataset_bytes(data: bytes | memoryview, transfer_syntax_uid: str) -> Dataset:
    """Decode the elements before Pixel Data of a bare data set in ``transfer_syntax_uid``."""
    raw: bytes | memoryview = data
    if transfer_syntax_uid == DEFLATED:
        try:
            raw = zlib.decompressobj(-zlib.MAX_WBITS).decompress(bytes(data))
        except zlib.error as exc:
            raise HeaderError(f"deflated data set does not inflate: {exc}") from exc
    fp = io.BytesIO(raw)
    try:
        ds = read_dataset(
            fp,
            is_implicit_VR=transfer_syntax_uid == IMPLICIT_VR_LE,
            is_little_endian=transfer_syntax_uid != BIG_ENDIAN,
            stop_when=_stop_at_pixels,
        )
    except Exception as exc:
        raise HeaderError(f"data set cannot be parsed: {exc}") from exc
    if not _complete(ds):
        raise HeaderError("data set is truncated (an element is shorter than its length)")
    return ds


def read_header_bytes(data: bytes | memoryview, transfer_syntax_uid: str) -> InstanceHeader:
    return header_from_dataset(read_dataset_bytes(data, transfer_syntax_uid))


#: Bytes tried first when the data set arrives in fragments; the header nearly always fits.
_HEAD_BYTES = 256 * 1024


def read_header_chunks(
    chunks: Sequence[bytes | memoryview], transfer_syntax_uid: str
) -> InstanceHeader:
    """Like read_header_bytes for a data set held as fragments, joining as little as possible.

    The first fragments (≥ 256 KiB) are parsed; if Pixel Data was not reached and more bytes
    remain, everything is joined and parsed again.
    """
    if len(chunks) == 1:
        return read_header_bytes(chunks[0], transfer_syntax_uid)
    if transfer_syntax_uid != DEFLATED:
        head: list[bytes | memoryview] = []
        size = 0
        for chunk in chunks:
            head.append(chunk)
            size += len(chunk)
            if size >= _HEAD_BYTES:
                break
        if len(head) < len(chunks):
            ds, complete = _read_until_pixels(b"".join(head), transfer_syntax_uid)
            if complete:
                return header_from_dataset(ds)
    return read_header_bytes(b"".join(chunks), transfer_syntax_uid)


def read_header_prefix(raw: bytes, transfer_syntax_uid: str) -> InstanceHeader:
    """Index attributes from the first bytes of a (large) data set; Pixel Data must be there."""
    ds, complete = _read_until_pixels(raw, transfer_syntax_uid)
    if not complete:
        raise HeaderError(f"no complete header within the first {len(raw)} bytes")
    return header_from_dataset(ds)


def _read_until_pixels(raw: bytes, ts: str) -> tuple[Dataset, bool]:
    """Parse a prefix of a data set; complete=True when Pixel Data (or later) was reached."""
    reached = False

    def stop(tag: Any, vr: Any, length: Any) -> bool:
        nonlocal reached
        if tag >= PIXEL_DATA:
            reached = True
            return True
        return False

    try:
        ds = read_dataset(
            io.BytesIO(raw),
            is_implicit_VR=ts == IMPLICIT_VR_LE,
            is_little_endian=ts != BIG_ENDIAN,
            stop_when=stop,
        )
    except Exception:
        return Dataset(), False
    return ds, reached and _complete(ds)


def _complete(ds: Dataset) -> bool:
    """No top-level element shorter than its declared length (a truncated data set)."""
    for elem in ds.elements():
        value = getattr(elem, "value", None)
        length = getattr(elem, "length", None)
        if (
            isinstance(value, bytes | bytearray | memoryview)
            and length is not None
            and length != 0xFFFFFFFF
            and len(value) != length
        ):
            return False
    return True


@dataclass
class Part10Info:
    """What a Part-10 file says about itself: meta, offset of the data set, header."""

    transfer_syntax_uid: str
    dataset_offset: int
    header: InstanceHeader
    has_meta: bool


def read_part10(path: Path | BinaryIO) -> Part10Info:
    """Parse a file (Part-10 with meta, or a bare data set) up to Pixel Data."""
    try:
        ds = dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
        raise HeaderError(f"not a DICOM file: {exc}") from exc
    except Exception as exc:
        raise HeaderError(f"not a DICOM file: {exc}") from exc
    meta = ds.file_meta
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    has_meta = bool(meta) and "TransferSyntaxUID" in meta
    if not ts:
        ts = IMPLICIT_VR_LE if ds.original_encoding[0] else "1.2.840.10008.1.2.1"
        if not ds.original_encoding[1]:
            ts = BIG_ENDIAN
    if len(ds) == 0 or (not has_meta and "SOPClassUID" not in ds):
        raise HeaderError("not a DICOM file: no file meta and no SOP Class UID")
    if not _complete(ds):
        raise HeaderError("data set is truncated (an element is shorter than its length)")
    offset = 0
    if has_meta:
        if isinstance(path, Path | str):
            with open(path, "rb") as fh:
                offset = dataset_offset(fh)
        else:
            path.seek(0)
            offset = dataset_offset(path)
    return Part10Info(ts, offset, header_from_dataset(ds), has_meta)


_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}


def dataset_offset(fh: BinaryIO) -> int:
    """Byte offset where the data set starts in a Part-10 file (after preamble and group 2).

    Walks the File Meta elements (always Explicit VR Little Endian, PS3.10 §7.1) rather than
    trusting (0002,0000), which some writers get wrong or omit.
    """
    fh.seek(0)
    head = fh.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        return 0
    pos = 132
    while True:
        fh.seek(pos)
        tag = fh.read(8)
        if len(tag) < 8 or int.from_bytes(tag[0:2], "little") != 0x0002:
            return pos
        vr = tag[4:6]
        if vr in _LONG_VRS:
            ext = fh.read(4)
            if len(ext) < 4:
                return pos
            pos += 12 + int.from_bytes(ext, "little")
        else:
            pos += 8 + int.from_bytes(tag[6:8], "little")
