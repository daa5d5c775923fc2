"""A DICOM File-set for export: PS3.10 file IDs and the DICOMDIR built from the index.

The zip download (``GET /api/studies/{uid}/archive``) holds a File-set (PS3.10 §8): every
instance under a PS3.10 §8.2 file ID (components of at most 8 characters from the upper-case
letters, digits and ``_``; at most 8 components)::

    DICOMDIR
    DICOM/PT000001/ST000001/SE000001/IM000001
                                    /IM000002 ...

and a DICOMDIR (PS3.10 §8.6; Basic Directory IOD, PS3.3 §F.3, Media Storage Directory
Storage SOP Class 1.2.840.10008.1.3.10, Explicit VR Little Endian) with one PATIENT, STUDY,
SERIES and IMAGE record (PS3.3 §F.5.1, F.5.2, F.5.3, F.5.18) per entity; objects without pixel
data get the record type of their IOD instead (SR DOCUMENT, KEY OBJECT DOC, PRESENTATION,
ENCAP DOC, RT ..., PS3.3 Table F.4-1) with its keys from the stored DICOM JSON. The records
are built from the index rows and stored JSON only (no file reads) and the record offsets
(PS3.3 §F.3.2.1: byte offsets from the first byte of the file's preamble to the item tag of
the record) are fixed in a second encoding pass: the Offset fields are UL, so setting them
never moves a record.

Type 1 keys that the index does not hold are filled as DCMTK's ``dcmmkdir +I`` does
("invented"): Patient ID ``UNKNOWN``, Study Date/Time from the time the study was received,
Study ID the study's position in the File-set, Series/Instance Number the position in the
study/series. Text that is not plain ASCII is written with Specific Character Set
``ISO_IR 192`` (UTF-8) in that record (PS3.3 §F.5, "1C: required if ... extended characters").
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from pacsbox.archive.storage import encode_file_meta

log = logging.getLogger("pacsbox.dicomdir")

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
ROOT = "DICOM"
IN_USE = 0xFFFF


@dataclass(frozen=True)
class FileSetInstance:
    """One instance of the export, as the index knows it."""

    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    study_instance_uid: str
    study_date: str
    study_time: str
    study_description: str
    study_id: str
    accession_number: str
    study_received_at: datetime | None
    series_instance_uid: str
    modality: str
    series_number: int | None
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    instance_number: int | None
    #: the stored file (storage key), opaque here
    key: str = ""
    #: the file was imported in place: ``key`` is its absolute path
    linked: bool = False
    storage_format: str = "part10"
    #: Rows from the index: None for objects without pixel data (SR, PR, KO, PDF, RT...)
    rows: int | None = None
    #: the stored DICOM JSON (instance.attributes), needed only when ``rows`` is None
    attributes: str | None = None


@dataclass
class FileSetPlan:
    """Where each instance goes in the File-set, and the DICOMDIR bytes."""

    files: list[tuple[FileSetInstance, tuple[str, ...]]] = field(default_factory=list)
    dicomdir: bytes = b""

    def zip_name(self, file_id: Sequence[str]) -> str:
        return "/".join(file_id)


def _ascii(*values: str) -> bool:
    return all(v.isascii() for v in values)


# -- records: hand-encoded Explicit VR Little Endian elements (pydicom's writer costs ~1 ms
# a record; a 5000-instance study must not wait seconds for its first byte) --------------
Element = tuple[int, str, str | int]

_UL_US = {"UL": "<I", "US": "<H"}


class _Record:
    """One directory record: its elements (group 0004 and text keys) and, for objects
    without pixels, a pydicom Dataset of the further keys (encoded by pydicom)."""

    __slots__ = ("kind", "elements", "extra", "utf8", "children")

    def __init__(self, kind: str, utf8: bool = False) -> None:
        self.kind = kind
        self.elements: list[Element] = []
        self.extra: Dataset | None = None
        self.utf8 = utf8
        self.children: list[_Record] = []

    def add(self, tag: int, vr: str, value: str | int) -> None:
        self.elements.append((tag, vr, value))

    def encode(self) -> bytes:
        """The record's item body; the three Offset/flag elements come first (their tags are
        the lowest), so the Offset values sit at fixed places (see ``_NEXT_AT``)."""
        elements: list[Element] = [
            (0x00041400, "UL", 0),
            (0x00041410, "US", IN_USE),
            (0x00041420, "UL", 0),
            (0x00041430, "CS", self.kind),
        ]
        if self.utf8 and self.extra is None:
            elements.append((0x00080005, "CS", "ISO_IR 192"))
        elements += self.elements
        elements.sort(key=lambda e: e[0])
        out = bytearray()
        for tag, vr, value in elements:
            if vr in _UL_US:
                raw = struct.pack(_UL_US[vr], value)
            else:
                raw = str(value).encode("utf-8" if self.utf8 else "ascii", "replace")
                if len(raw) % 2:
                    raw += b"\0" if vr == "UI" else b" "
            out += struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(raw)) + raw
        if self.extra is not None:
            if self.utf8:
                self.extra.SpecificCharacterSet = "ISO_IR 192"
            fp = DicomBytesIO()
            fp.is_little_endian = True
            fp.is_implicit_VR = False
            write_dataset(fp, self.extra)
            out += fp.getvalue()
        return bytes(out)


#: where the values of Offset of the Next Directory Record and Offset of Referenced
#: Lower-Level Directory Entity are, counted from the record's item tag
_NEXT_AT = 8 + 8
_LOWER_AT = 8 + 12 + 10 + 8


def _number(value: int | None, fallback: int) -> str:
    return str(value if value is not None else fallback)


def plan_file_set(instances: Sequence[FileSetInstance], file_set_id: str = "") -> FileSetPlan:
    """Assign file IDs and build the DICOMDIR for ``instances`` (any order; grouped here by
    patient, study and series in order of first appearance)."""
    plan = FileSetPlan()
    patients: dict[tuple[str, str], _Record] = {}
    studies: dict[str, _Record] = {}
    series: dict[str, _Record] = {}
    roots: list[_Record] = []
    names: dict[int, str] = {}  # id(record) -> its file ID component

    for inst in instances:
        pkey = (inst.patient_id, inst.issuer_of_patient_id)
        prec = patients.get(pkey)
        if prec is None:
            prec = _Record("PATIENT", not _ascii(inst.patient_name, inst.patient_id))
            prec.add(0x00100010, "PN", inst.patient_name)
            prec.add(0x00100020, "LO", inst.patient_id or "UNKNOWN")
            patients[pkey] = prec
            roots.append(prec)
            names[id(prec)] = f"PT{len(roots):06d}"
        srec = studies.get(inst.study_instance_uid)
        if srec is None:
            srec = _Record(
                "STUDY", not _ascii(inst.study_description, inst.study_id, inst.accession_number)
            )
            received = inst.study_received_at or datetime(1900, 1, 1)
            srec.add(0x00080020, "DA", inst.study_date or received.strftime("%Y%m%d"))
            srec.add(0x00080030, "TM", inst.study_time or received.strftime("%H%M%S"))
            srec.add(0x00080050, "SH", inst.accession_number)
            srec.add(0x00081030, "LO", inst.study_description)
            srec.add(0x0020000D, "UI", inst.study_instance_uid)
            srec.add(0x00200010, "SH", inst.study_id or str(len(studies) + 1))
            studies[inst.study_instance_uid] = srec
            prec.children.append(srec)
            names[id(srec)] = f"ST{len(prec.children):06d}"
        serec = series.get(inst.series_instance_uid)
        if serec is None:
            serec = _Record("SERIES")
            serec.add(0x00080060, "CS", inst.modality or "OT")
            serec.add(0x0020000E, "UI", inst.series_instance_uid)
            serec.add(0x00200011, "IS", _number(inst.series_number, len(srec.children) + 1))
            series[inst.series_instance_uid] = serec
            srec.children.append(serec)
            names[id(serec)] = f"SE{len(srec.children):06d}"
        n = len(serec.children) + 1
        if n > 999_999:
            raise ValueError("more than 999999 instances in one series")
        file_id = (ROOT, names[id(prec)], names[id(srec)], names[id(serec)], f"IM{n:06d}")
        rec = _leaf_record(inst, n)
        rec.add(0x00041500, "CS", "\\".join(file_id))
        rec.add(0x00041510, "UI", inst.sop_class_uid)
        rec.add(0x00041511, "UI", inst.sop_instance_uid)
        rec.add(0x00041512, "UI", inst.transfer_syntax_uid)
        serec.children.append(rec)
        plan.files.append((inst, file_id))

    plan.dicomdir = encode_dicomdir(roots, file_set_id)
    return plan


def _leaf_record(inst: FileSetInstance, position: int) -> _Record:
    """The fourth-level record (PS3.3 §F.4, Table F.4-1): IMAGE for objects with pixel data;
    for the others the record type of their IOD (SR DOCUMENT, KEY OBJECT DOC, PRESENTATION,
    ENCAP DOC, RT DOSE, ...) with its keys (PS3.3 §F.5) taken from the stored DICOM JSON by
    pydicom's record definitions. An object whose JSON lacks a Type 1 key of its record type
    falls back to an IMAGE record (logged)."""
    if inst.rows is None and inst.attributes:
        try:
            from pydicom.fileset import DIRECTORY_RECORDERS, _four_level_record_type

            ds = Dataset.from_json(inst.attributes)
            ds.SOPClassUID = inst.sop_class_uid
            kind = (
                "ENCAP DOC"
                if "MIMETypeOfEncapsulatedDocument" in ds
                else _four_level_record_type(ds)
            )
            if kind != "IMAGE":
                body = DIRECTORY_RECORDERS[kind](ds)
                texts = [str(e.value) for e in body.iterall() if isinstance(e.value, str)]
                rec = _Record(kind, not _ascii(*texts))
                rec.extra = body
                return rec
        except Exception as exc:  # missing Type 1 key, unreadable JSON
            log.warning(
                "DICOMDIR: %s listed as IMAGE: %s", inst.sop_instance_uid, str(exc)[:200]
            )
    rec = _Record("IMAGE")
    rec.add(0x00200013, "IS", _number(inst.instance_number, position))
    return rec


def _flatten(nodes: list[_Record], out: list[_Record]) -> None:
    for node in nodes:
        out.append(node)
        _flatten(node.children, out)


def _element(group: int, elem: int, vr: bytes, raw: bytes) -> bytes:
    return struct.pack("<HH2sH", group, elem, vr, len(raw)) + raw


def encode_dicomdir(roots: list[_Record], file_set_id: str = "") -> bytes:
    """The DICOMDIR file (PS3.10 §7 + PS3.3 §F.3) with correct record offsets: records are
    encoded once, laid out in a defined-length Directory Record Sequence, and their Offset
    values (bytes from the start of the file to a record's item tag) patched in place."""
    order: list[_Record] = []
    _flatten(roots, order)
    bodies = [r.encode() for r in order]

    head = encode_file_meta(MEDIA_STORAGE_DIRECTORY, generate_uid(), EXPLICIT_VR_LE)
    fsid = file_set_id[:16].encode("ascii", "replace")
    if len(fsid) % 2:
        fsid += b" "
    seq_length = sum(8 + len(b) for b in bodies)
    top = (
        _element(0x0004, 0x1130, b"CS", fsid)
        + _element(0x0004, 0x1200, b"UL", b"\0\0\0\0")
        + _element(0x0004, 0x1202, b"UL", b"\0\0\0\0")
        + _element(0x0004, 0x1212, b"US", struct.pack("<H", 0))
        + struct.pack("<HH2sHI", 0x0004, 0x1220, b"SQ", 0, seq_length)
    )
    first_at = len(head) + len(fsid) + 8 + 8  # value of (0004,1200)
    last_at = first_at + 12  # value of (0004,1202)
    out = bytearray(head + top)
    offsets: dict[int, int] = {}
    for rec, body in zip(order, bodies, strict=True):
        offsets[id(rec)] = len(out)
        out += struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body

    def link(siblings: list[_Record]) -> None:
        for i, rec in enumerate(siblings):
            at = offsets[id(rec)]
            if i + 1 < len(siblings):
                struct.pack_into("<I", out, at + _NEXT_AT, offsets[id(siblings[i + 1])])
            if rec.children:
                struct.pack_into("<I", out, at + _LOWER_AT, offsets[id(rec.children[0])])
                link(rec.children)

    link(roots)
    if roots:
        struct.pack_into("<I", out, first_at, offsets[id(roots[0])])
        struct.pack_into("<I", out, last_at, offsets[id(roots[-1])])
    return bytes(out)
