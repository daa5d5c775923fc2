"""Basic Profile de-identification (PS3.15 Annex E) used by WADO-URI anonymize=yes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacsbox.archive.deidentify import (
    CannotDeidentify,
    archive_secret,
    deidentify,
    replace_uid,
)
from tests.helpers import make_ct

SECRET = b"k" * 32


def _identified() -> Dataset:
    ds = make_ct(patient_name="Doe^Jane", patient_id="MRN-4711")
    ds.InstitutionName = "General Hospital"
    ds.OperatorsName = "Smith^Op"
    ds.StudyDescription = "Head of Jane Doe"
    ds.PatientAddress = "1 Main Street"
    ds.FrameOfReferenceUID = "1.2.3.4.5"
    ds.add_new(0x00091010, "LO", "private secret")
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = "1.2.3.4.6"
    ref.OperatorsName = "Nested^Name"
    ds.SourceImageSequence = Sequence([ref])
    ds.add_new(0x60003000, "OW", b"\x00\x01" * 8)
    return ds


def test_basic_profile_actions() -> None:
    ds = _identified()
    sop_class = ds.SOPClassUID
    original_study = ds.StudyInstanceUID
    pixels = ds.PixelData
    deidentify(ds, SECRET)
    assert ds.PatientName == "" and ds.PatientID == "" and ds.PatientBirthDate == ""
    assert ds.AccessionNumber == "" and ds.StudyDate == ""
    for gone in ("InstitutionName", "OperatorsName", "StudyDescription", "PatientAddress"):
        assert gone not in ds
    assert 0x00091010 not in ds  # private
    assert 0x60003000 not in ds  # overlay data
    assert "OperatorsName" not in ds.SourceImageSequence[0]  # sequences are cleaned too
    assert ds.SOPClassUID == sop_class  # standard UIDs kept
    assert ds.SourceImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.StudyInstanceUID != original_study and ds.StudyInstanceUID.startswith("2.25.")
    assert ds.StudyInstanceUID == replace_uid(original_study, SECRET)
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == replace_uid("1.2.3.4.6", SECRET)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert ds.PixelData == pixels
    assert all(len(str(v)) <= 64 for v in (ds.StudyInstanceUID, ds.SOPInstanceUID))


def test_uids_are_consistent_per_secret_and_not_across() -> None:
    a, b = _identified(), _identified()
    b.StudyInstanceUID = a.StudyInstanceUID  # two instances of one study
    deidentify(a, SECRET)
    deidentify(b, SECRET)
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert replace_uid("1.2.3", SECRET) != replace_uid("1.2.3", b"other" * 8)


def test_burned_in_annotation_is_refused() -> None:
    ds = _identified()
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(CannotDeidentify):
        deidentify(ds, SECRET)


def test_archive_secret_is_made_once_and_private(tmp_path: Path) -> None:
    first = archive_secret(tmp_path)
    assert archive_secret(tmp_path) == first and len(first) == 32
    assert (tmp_path / "deidentify.key").stat().st_mode & 0o077 == 0
