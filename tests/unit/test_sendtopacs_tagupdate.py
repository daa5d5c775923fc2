"""Tag update patterns and "replace full worklist info" (SPEC S3, sendtopacs/tagupdate.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacsbox.sendtopacs.patient import PatientInfo
from pacsbox.sendtopacs.tagupdate import (
    TagUpdate,
    TagUpdateError,
    apply_updates,
    apply_worklist,
    parse_tag,
    parse_updates,
    prepare,
    render,
)
from pacsbox.sendtopacs.worklist import WorklistEntry
from tests.helpers import make_ct


def ct() -> Dataset:
    ds = make_ct(patient_id="OLD1", patient_name="Old^Patient")
    ds.OtherPatientIDs = "X9"
    ds.PatientAge = "056Y"
    ds.StudyDescription = "old study"
    return ds


def test_parse_tag_forms() -> None:
    assert parse_tag("Modality") == 0x00080060
    assert parse_tag("(0008,0060)") == 0x00080060
    assert parse_tag("0008,0060") == 0x00080060
    assert parse_tag("00080060") == 0x00080060
    with pytest.raises(TagUpdateError, match="neither a DICOM keyword"):
        parse_tag("Modalty")


def test_template_reads_keywords_and_tags() -> None:
    ds = ct()
    assert render("{Modality} - test", ds) == "CT - test"
    assert render("{0008,0060} - test", ds) == "CT - test"
    assert render("{(0010,0020)}/{PatientName}", ds) == "OLD1/Old^Patient"
    assert render("{{literal}} {InstitutionName}.", ds) == "{literal} ."
    with pytest.raises(TagUpdateError, match="unbalanced"):
        render("{Modality", ds)
    with pytest.raises(TagUpdateError, match="neither"):
        render("{NoSuchThing}", ds)


def test_update_modality_and_description() -> None:
    ds = ct()
    changes = apply_updates(
        ds,
        parse_updates(["Modality=OT", "StudyDescription={Modality} - test"]),
    )
    assert ds.Modality == "OT"
    # templates read the values from before this list ran: order does not matter
    assert ds.StudyDescription == "CT - test"
    assert [(c.tag, c.action, c.old, c.new) for c in changes] == [
        ("Modality", "set", "CT", "OT"),
        ("StudyDescription", "set", "old study", "CT - test"),
    ]


def test_conditions_matrix() -> None:
    ds = ct()
    ds.InstitutionName = ""
    ups = [
        TagUpdate("Modality", "OT", if_empty=True),  # has a value → left alone
        TagUpdate("InstitutionName", "Clinic", if_empty=True),  # empty → set
        TagUpdate("StationName", "CAM1"),  # missing, no create → left alone
        TagUpdate("SeriesDescription", "photos", create=True),  # missing + create → created
        TagUpdate("ReferringPhysicianName", "Ref^Doc", if_empty=True, create=True),  # empty
        TagUpdate("PerformingPhysicianName", "Perf^Doc", if_empty=True, create=True),  # missing
    ]
    changes = apply_updates(ds, ups)
    assert ds.Modality == "CT"
    assert ds.InstitutionName == "Clinic"
    assert "StationName" not in ds
    assert ds.SeriesDescription == "photos"
    assert str(ds.ReferringPhysicianName) == "Ref^Doc"
    assert str(ds.PerformingPhysicianName) == "Perf^Doc"
    assert [c.action for c in changes] == ["skipped", "set", "skipped", "created", "set", "created"]


BAD_VALUES = [
    ("Modality=ct", "Invalid value for VR CS"),
    ("AccessionNumber=12345678901234567", "exceeds the maximum length of 16"),
    ("StudyDate=2026-13-01", "Invalid value for VR DA"),
    ("StudyTime=256000", "Invalid value for VR TM"),
    ("StudyInstanceUID=1.2.abc", "Invalid value for VR UI"),
    ("PatientID=a\\b", "one value only"),
    ("Rows=70000", "out of range for VR US"),
    ("Rows=ten", "not a number"),
    ("PatientName=A^B^C^D^E^F", "at most 5 components"),
    ("PatientID=bad\ttab", "control characters"),
]
BAD_TARGETS = [
    ("(0009,0010)=x", "private tags"),
    ("PixelData=x", "cannot be updated"),
    ("TransferSyntaxUID=1.2", "file meta"),
    ("SpecificCharacterSet=ISO_IR 100", "character set follows"),
    ("ReferencedSeriesSequence=x", "cannot be updated"),
    ("Modality", "TAG=VALUE"),
]


@pytest.mark.parametrize(("update", "message"), BAD_VALUES + BAD_TARGETS)
def test_invalid_fixed_updates_are_refused_when_parsed(update: str, message: str) -> None:
    with pytest.raises(TagUpdateError, match=message):
        TagUpdate.parse(update)


@pytest.mark.parametrize(("update", "message"), BAD_VALUES)
def test_invalid_template_results_change_nothing(update: str, message: str) -> None:
    target, _, value = update.partition("=")
    ds = ct()
    ds.ImageComments = value  # the bad value comes out of a template at apply time
    before = ds.to_json_dict()
    ups = [TagUpdate("StudyDescription", "changed"), TagUpdate(target, "{ImageComments}")]
    with pytest.raises(TagUpdateError, match=message):
        apply_updates(ds, ups)
    assert ds.to_json_dict() == before  # all or nothing


def test_multi_valued_and_numeric() -> None:
    ds = ct()
    apply_updates(
        ds,
        [
            TagUpdate("ImageType", "DERIVED\\SECONDARY", create=True),
            TagUpdate("Rows", "32"),
            TagUpdate("WindowCenter", "40\\400", create=True),
        ],
    )
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.Rows == 32
    assert [float(v) for v in ds.WindowCenter] == [40.0, 400.0]


def test_non_ascii_value_switches_to_utf8_and_round_trips(tmp_path: Path) -> None:
    ds = make_ct(patient_name="Ærø^Åse")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDescription = "Kopf"
    path = tmp_path / "a.dcm"
    ds.save_as(path, enforce_file_format=True)
    ds = dcmread(path)
    apply_updates(ds, [TagUpdate("StudyDescription", "Σκαναρισμα {PatientName}")])
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    out = tmp_path / "b.dcm"
    ds.save_as(out, enforce_file_format=True)
    back = dcmread(out)
    assert back.StudyDescription == "Σκαναρισμα Ærø^Åse"
    assert str(back.PatientName) == "Ærø^Åse"


def test_latin1_value_kept_in_latin1_when_it_fits(tmp_path: Path) -> None:
    ds = make_ct()
    ds.SpecificCharacterSet = "ISO_IR 100"
    apply_updates(ds, [TagUpdate("StudyDescription", "Schädel", create=True)])
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    ds.save_as(tmp_path / "c.dcm", enforce_file_format=True)
    assert dcmread(tmp_path / "c.dcm").StudyDescription == "Schädel"


def test_sop_instance_uid_change_is_mirrored_in_file_meta() -> None:
    ds = ct()
    uid = generate_uid()
    apply_updates(ds, [TagUpdate("SOPInstanceUID", uid)])
    assert ds.SOPInstanceUID == uid
    assert ds.file_meta.MediaStorageSOPInstanceUID == uid


def _entry(**kw: str) -> WorklistEntry:
    p = PatientInfo(
        patient_id="WL001",
        last_name="Muster",
        first_name="Anna",
        birth_date="19800101",
        sex="F",
        accession_number="ACC100",
        study_description="Skin photo",
        referring_physician="Ref^Doc",
    )
    for k, v in kw.items():
        setattr(p, k, v)
    return WorklistEntry(
        p, modality="XC", requested_procedure_id="RP1", sps_id="SPS1", sps_description="photo"
    )


def test_replace_full_worklist_info(tmp_path: Path) -> None:
    ds = ct()
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    changes = apply_worklist(ds, _entry())
    assert str(ds.PatientName) == "Muster^Anna"
    assert ds.PatientID == "WL001"
    assert ds.PatientBirthDate == "19800101"
    assert ds.PatientSex == "F"
    assert ds.AccessionNumber == "ACC100"
    assert ds.StudyDescription == "Skin photo"
    assert str(ds.ReferringPhysicianName) == "Ref^Doc"
    # no Study Instance UID in the worklist → all UIDs kept
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (study, series, sop)
    assert "OtherPatientIDs" not in ds and "PatientAge" not in ds
    req = ds.RequestAttributesSequence[0]
    assert (req.RequestedProcedureID, req.ScheduledProcedureStepID) == ("RP1", "SPS1")
    assert req.AccessionNumber == "ACC100"
    assert {c.tag for c in changes if c.action == "removed"} == {"OtherPatientIDs", "PatientAge"}
    ds.save_as(tmp_path / "wl.dcm", enforce_file_format=True)
    assert dcmread(tmp_path / "wl.dcm").PatientID == "WL001"


def test_replace_full_worklist_info_takes_the_study_uid_when_given() -> None:
    ds = ct()
    series = ds.SeriesInstanceUID
    uid = generate_uid()
    apply_worklist(ds, _entry(study_instance_uid=uid, study_description=""))
    assert ds.StudyInstanceUID == uid
    assert ds.SeriesInstanceUID == series
    assert "StudyDescription" not in ds  # the worklist has none: the old one would be wrong


def test_replace_full_worklist_info_refuses_an_invalid_entry() -> None:
    ds = ct()
    before = ds.to_json_dict()
    with pytest.raises(ValueError, match="patient id: required"):
        apply_worklist(ds, _entry(patient_id=""))
    with pytest.raises(ValueError, match="birth date"):
        apply_worklist(ds, _entry(birth_date="19801340"))
    assert ds.to_json_dict() == before


def test_prepare_modes() -> None:
    ds = ct()
    assert prepare(ds) == []
    assert ds.PatientID == "OLD1"
    prepare(ds, mode="worklist", entry=_entry(), updates=[TagUpdate("Modality", "XC")])
    assert (ds.PatientID, ds.Modality) == ("WL001", "XC")
    with pytest.raises(TagUpdateError, match="needs a worklist entry"):
        prepare(ds, mode="worklist")
    with pytest.raises(TagUpdateError, match="as-is or worklist"):
        prepare(ds, mode="other")


def test_settings_form_round_trips() -> None:
    up = TagUpdate("(0008,0060)", "{Modality} - x", if_empty=True)
    again = TagUpdate.from_dict(up.as_dict())
    assert (again.number, again.value, again.if_empty, again.create) == (
        0x00080060,
        "{Modality} - x",
        True,
        False,
    )
    with pytest.raises(TagUpdateError):
        TagUpdate.from_dict({"value": "x"})


def test_charset_switch_re_encodes_nested_values(tmp_path: Path) -> None:
    ds = make_ct()
    ds.SpecificCharacterSet = "ISO_IR 100"
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "X", "99X", "Schädel"
    ds.AnatomicRegionSequence = [item]
    ds.save_as(tmp_path / "n.dcm", enforce_file_format=True)
    ds = dcmread(tmp_path / "n.dcm")
    apply_updates(ds, [TagUpdate("StudyDescription", "Σ", create=True)])
    ds.save_as(tmp_path / "n2.dcm", enforce_file_format=True)
    back = dcmread(tmp_path / "n2.dcm")
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert back.StudyDescription == "Σ"
    assert back.AnatomicRegionSequence[0].CodeMeaning == "Schädel"
