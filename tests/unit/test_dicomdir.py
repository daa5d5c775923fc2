"""The export File-set (archive/dicomdir.py): PS3.10 §8.2 file IDs and a DICOMDIR (PS3.3 §F)
that dciodvfy, dcmdump and pydicom's FileSet accept, with correct record offsets."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from pacsbox.archive.dicomdir import FileSetInstance, plan_file_set
from tests.helpers import dcmtk_env

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def _instances() -> list[FileSetInstance]:
    out = []
    for p, (pid, name) in enumerate([("PAT1", "Müller^Jörg"), ("", "Anon")]):
        for st in range(2 - p):
            study = generate_uid()
            for se in range(2):
                series = generate_uid()
                for i in range(3):
                    out.append(
                        FileSetInstance(
                            patient_id=pid,
                            issuer_of_patient_id="",
                            patient_name=name,
                            study_instance_uid=study,
                            study_date="20260102" if st == 0 else "",
                            study_time="",
                            study_description="Thorax",
                            study_id="",
                            accession_number="A1",
                            study_received_at=datetime(2026, 3, 4, 5, 6, 7),
                            series_instance_uid=series,
                            modality="CT",
                            series_number=None if se else 7,
                            sop_class_uid=CT,
                            sop_instance_uid=generate_uid(),
                            transfer_syntax_uid=EXPLICIT,
                            instance_number=None if i == 2 else i + 1,
                        )
                    )
    return out


def _write(tmp_path: Path) -> tuple[Path, list]:
    plan = plan_file_set(_instances())
    (tmp_path / "DICOMDIR").write_bytes(plan.dicomdir)
    return tmp_path / "DICOMDIR", plan.files


def test_file_ids_conform_to_ps3_10() -> None:
    plan = plan_file_set(_instances())
    ids = [fid for _, fid in plan.files]
    assert len(set(ids)) == len(ids) == 18
    for fid in ids:
        assert 1 <= len(fid) <= 8
        assert all(re.fullmatch(r"[A-Z0-9_]{1,8}", c) for c in fid), fid
    assert ids[0] == ("DICOM", "PT000001", "ST000001", "SE000001", "IM000001")


def test_record_tree_and_offsets(tmp_path: Path) -> None:
    path, files = _write(tmp_path)
    ds = dcmread(path)
    assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"
    records = ds.DirectoryRecordSequence
    at = {int(r.seq_item_tell): r for r in records}

    def chain(offset: int) -> list:
        out = []
        while offset:
            rec = at[offset]  # every offset points at a record's item tag
            out.append(rec)
            offset = rec.OffsetOfTheNextDirectoryRecord
        return out

    patients = chain(ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity)
    assert [r.DirectoryRecordType for r in patients] == ["PATIENT", "PATIENT"]
    assert int(patients[-1].seq_item_tell) == (
        ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity
    )
    assert patients[1].PatientID == "UNKNOWN"  # invented Type 1 value
    images = []
    for pat in patients:
        for study in chain(pat.OffsetOfReferencedLowerLevelDirectoryEntity):
            assert study.DirectoryRecordType == "STUDY" and study.StudyDate and study.StudyTime
            for series in chain(study.OffsetOfReferencedLowerLevelDirectoryEntity):
                assert series.DirectoryRecordType == "SERIES" and series.SeriesNumber != ""
                images += chain(series.OffsetOfReferencedLowerLevelDirectoryEntity)
    assert len(images) == len(files) == 18
    for rec, (inst, fid) in zip(images, files, strict=True):
        assert rec.DirectoryRecordType == "IMAGE"
        assert tuple(rec.ReferencedFileID) == fid
        assert rec.ReferencedSOPInstanceUIDInFile == inst.sop_instance_uid
        assert rec.ReferencedSOPClassUIDInFile == CT
        assert rec.ReferencedTransferSyntaxUIDInFile == EXPLICIT
        assert rec.InstanceNumber != ""
    assert str(patients[0].PatientName) == "Müller^Jörg"
    assert patients[0].SpecificCharacterSet == "ISO_IR 192"


@pytest.mark.interop
@pytest.mark.skipif(not shutil.which("dciodvfy"), reason="dciodvfy not installed")
def test_dciodvfy_and_dcmdump_accept_it(tmp_path: Path) -> None:
    path, _ = _write(tmp_path)
    out = subprocess.run(
        ["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True, timeout=60
    )
    report = out.stdout + out.stderr
    assert "BasicDirectory" in report
    assert not [line for line in report.splitlines() if line.startswith("Error")], report
    dump = subprocess.run(
        ["/usr/bin/dcmdump", "-q", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dcmtk_env(),
    )
    assert dump.returncode == 0, dump.stderr
    assert dump.stdout.count('"Directory Record" IMAGE') == 18


def _sr_json(complete: bool = True) -> str:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.InstanceNumber = 1
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ContentDate = "20260102"
    ds.ContentTime = "101010"
    if complete:
        code = Dataset()
        code.CodeValue = "11528-7"
        code.CodingSchemeDesignator = "LN"
        code.CodeMeaning = "Radiology Report"
        ds.ConceptNameCodeSequence = [code]
    return ds.to_json()


@pytest.mark.parametrize("complete", [True, False])
def test_objects_without_pixels_get_their_record_type(tmp_path: Path, complete: bool) -> None:
    image = _instances()[0]
    sr = FileSetInstance(
        **{
            **image.__dict__,
            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.11",
            "sop_instance_uid": generate_uid(),
            "modality": "SR",
            "rows": None,
            "attributes": _sr_json(complete),
        }
    )
    plan = plan_file_set([image, sr])
    path = tmp_path / "DICOMDIR"
    path.write_bytes(plan.dicomdir)
    kinds = [r.DirectoryRecordType for r in dcmread(path).DirectoryRecordSequence]
    # without its Concept Name the SR cannot make an SR DOCUMENT record: listed as IMAGE
    assert kinds[-2:] == ["IMAGE", "SR DOCUMENT" if complete else "IMAGE"]
    if complete and shutil.which("dciodvfy"):
        out = subprocess.run(
            ["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True, timeout=60
        )
        errors = [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")]
        assert not errors, out.stdout + out.stderr
