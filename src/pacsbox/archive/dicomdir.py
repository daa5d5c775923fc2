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

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacsbox import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = logging.getLogger("pacsbox.dicomdir")

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
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


def _record(kind: str, charset: bool) -> Dataset:
    rec = Dataset()
    rec.OffsetOfTheNextDirectoryRecord = 0
    rec.RecordInUseFlag = IN_USE
    rec.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    rec.DirectoryRecordType = kind
    if charset:
        rec.SpecificCharacterSet = "ISO_IR 192"
    return rec


def _number(value: int | None, fallback: int) -> str:
    return str(value if value is not None else fallback)


class _Node:
    __slots__ = ("record", "children")

    def __init__(self, record: Dataset) -> None:
        self.record = record
        self.children: list[_Node] = []


def plan_file_set(instances: Sequence[FileSetInstance], file_set_id: str = "") -> FileSetPlan:
    """Assign file IDs and build the DICOMDIR for ``instances`` (any order; grouped here by
    patient, study and series in order of first appearance)."""
    plan = FileSetPlan()
    patients: dict[tuple[str, str], _Node] = {}
    studies: dict[str, _Node] = {}
    series: dict[str, _Node] = {}
    roots: list[_Node] = []
    names: dict[int, str] = {}  # id(node) -> its file ID component
    parents: dict[int, _Node] = {}

    for inst in instances:
        pkey = (inst.patient_id, inst.issuer_of_patient_id)
        pnode = patients.get(pkey)
        if pnode is None:
            rec = _record("PATIENT", not _ascii(inst.patient_name, inst.patient_id))
            rec.PatientName = inst.patient_name
            rec.PatientID = inst.patient_id or "UNKNOWN"
            pnode = patients[pkey] = _Node(rec)
            roots.append(pnode)
            names[id(pnode)] = f"PT{len(roots):06d}"
        snode = studies.get(inst.study_instance_uid)
        if snode is None:
            rec = _record(
                "STUDY",
                not _ascii(inst.study_description, inst.study_id, inst.accession_number),
            )
            received = inst.study_received_at or datetime(1900, 1, 1)
            rec.StudyDate = inst.study_date or received.strftime("%Y%m%d")
            rec.StudyTime = inst.study_time or received.strftime("%H%M%S")
            rec.StudyDescription = inst.study_description
            rec.StudyInstanceUID = inst.study_instance_uid
            rec.StudyID = inst.study_id or str(len(studies) + 1)
            rec.AccessionNumber = inst.accession_number
            snode = studies[inst.study_instance_uid] = _Node(rec)
            pnode.children.append(snode)
            names[id(snode)] = f"ST{len(pnode.children):06d}"
            parents[id(snode)] = pnode
        senode = series.get(inst.series_instance_uid)
        if senode is None:
            rec = _record("SERIES", False)
            rec.Modality = inst.modality or "OT"
            rec.SeriesInstanceUID = inst.series_instance_uid
            rec.SeriesNumber = _number(inst.series_number, len(snode.children) + 1)
            senode = series[inst.series_instance_uid] = _Node(rec)
            snode.children.append(senode)
            names[id(senode)] = f"SE{len(snode.children):06d}"
            parents[id(senode)] = snode
        n = len(senode.children) + 1
        if n > 999_999:
            raise ValueError("more than 999999 instances in one series")
        file_id = (
            ROOT,
            names[id(pnode)],
            names[id(snode)],
            names[id(senode)],
            f"IM{n:06d}",
        )
        rec = _leaf_record(inst, n)
        rec.ReferencedFileID = list(file_id)
        rec.ReferencedSOPClassUIDInFile = inst.sop_class_uid
        rec.ReferencedSOPInstanceUIDInFile = inst.sop_instance_uid
        rec.ReferencedTransferSyntaxUIDInFile = inst.transfer_syntax_uid
        senode.children.append(_Node(rec))
        plan.files.append((inst, file_id))

    plan.dicomdir = encode_dicomdir(roots, file_set_id)
    return plan


def _leaf_record(inst: FileSetInstance, position: int) -> Dataset:
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
                rec = _record(kind, not _ascii(*texts))
                for elem in body:
                    rec.add(elem)
                return rec
        except Exception as exc:  # missing Type 1 key, unreadable JSON
            log.warning(
                "DICOMDIR: %s listed as IMAGE: %s", inst.sop_instance_uid, str(exc)[:200]
            )
    rec = _record("IMAGE", False)
    rec.InstanceNumber = _number(inst.instance_number, position)
    return rec


def _flatten(nodes: list[_Node], out: list[_Node]) -> None:
    for node in nodes:
        out.append(node)
        _flatten(node.children, out)


def encode_dicomdir(roots: list[_Node], file_set_id: str = "") -> bytes:
    """The DICOMDIR file (PS3.10 §7 + PS3.3 §F.3) with correct record offsets."""
    order: list[_Node] = []
    _flatten(roots, order)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MEDIA_STORAGE_DIRECTORY
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    ds.FileSetID = file_set_id[:16]
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = DicomSequence([n.record for n in order])

    def encode() -> bytes:
        buf = io.BytesIO()
        dcmwrite(buf, ds, enforce_file_format=True)
        return buf.getvalue()

    first = encode()
    # where each record's item tag landed (pydicom notes it when reading)
    parsed = dcmread(io.BytesIO(first))
    offsets = {
        id(node): int(item.seq_item_tell)
        for node, item in zip(order, parsed.DirectoryRecordSequence, strict=True)
    }

    def link(siblings: list[_Node]) -> None:
        for i, node in enumerate(siblings):
            nxt = siblings[i + 1] if i + 1 < len(siblings) else None
            node.record.OffsetOfTheNextDirectoryRecord = offsets[id(nxt)] if nxt else 0
            node.record.OffsetOfReferencedLowerLevelDirectoryEntity = (
                offsets[id(node.children[0])] if node.children else 0
            )
            link(node.children)

    link(roots)
    if roots:
        ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = offsets[id(roots[0])]
        ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = offsets[id(roots[-1])]
    second = encode()
    if len(second) != len(first):  # UL fields only changed: the layout cannot move
        raise AssertionError("DICOMDIR layout moved while setting offsets")
    return second
