"""De-identification with the Basic Application Level Confidentiality Profile
(PS3.15 Annex E, Table E.1-1 "Basic Profile" column), as used by WADO-URI ``anonymize=yes``
(PS3.18 §9).

What is done, on the whole data set (sequence items included):

- **X** (remove) and **Z** (empty) and **D** (dummy value) for the attributes of
  :data:`ACTIONS` — the identifying attributes of the Basic Profile that occur in practice
  (names, IDs, dates and times of the patient, study, series, acquisition and content,
  addresses, institution, physicians, operators, device serials, comments, descriptions of
  free text, Request Attributes Sequence ...). A type 1 attribute that the profile says
  "Z/D" or "X/D" gets a dummy value so the object stays valid.
- **U** (UIDs): every UI value that is not a UID of the standard (SOP classes, transfer
  syntaxes, coding schemes, well-known frames of reference keep theirs) is replaced by
  ``2.25.<integer>`` derived with HMAC-SHA256 from a per-archive secret: the same original UID
  always maps to the same new UID, so instances downloaded one by one still form one study and
  references between them still resolve; nobody without the secret can reverse or test it.
- **Private attributes** are removed (Basic Profile: "X" for private tags; none retained).
- Overlays (groups 60xx Overlay Data/Comments), curves (50xx) are removed.
- Patient Identity Removed (0012,0062) = YES, De-identification Method (0012,0063) and the
  De-identification Method Code Sequence (0012,0064) with (113100, DCM, "Basic Application
  Confidentiality Profile") are added.

Not done (the Basic Profile's options): cleaning pixel data, structured content or graphics,
retaining dates or UIDs, longitudinal modified dates. An object that says Burned In
Annotation = YES is refused (:class:`CannotDeidentify`): its pixels would still identify.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

METHOD = "PS3.15 Annex E Basic Application Level Confidentiality Profile (pacsbox)"
SECRET_FILE = "deidentify.key"

X, Z, D = "X", "Z", "D"
#: Basic Profile actions by keyword (PS3.15 Table E.1-1), a practical subset.
ACTIONS: dict[str, str] = {
    # patient
    "PatientName": Z,
    "PatientID": Z,
    "IssuerOfPatientID": X,
    "IssuerOfPatientIDQualifiersSequence": X,
    "PatientBirthDate": Z,
    "PatientBirthTime": X,
    "PatientBirthName": X,
    "PatientSex": Z,
    "PatientAge": X,
    "PatientSize": X,
    "PatientWeight": X,
    "PatientAddress": X,
    "PatientTelephoneNumbers": X,
    "PatientTelecomInformation": X,
    "PatientMotherBirthName": X,
    "OtherPatientIDs": X,
    "OtherPatientIDsSequence": X,
    "OtherPatientNames": X,
    "MilitaryRank": X,
    "BranchOfService": X,
    "MedicalRecordLocator": X,
    "EthnicGroup": X,
    "Occupation": X,
    "PatientReligiousPreference": X,
    "PatientComments": X,
    "AdditionalPatientHistory": X,
    "Allergies": X,
    "MedicalAlerts": X,
    "PregnancyStatus": X,
    "SmokingStatus": X,
    "LastMenstrualDate": X,
    "PatientState": X,
    "ResponsiblePerson": X,
    "ResponsibleOrganization": X,
    "CountryOfResidence": X,
    "RegionOfResidence": X,
    "CurrentPatientLocation": X,
    "PatientInsurancePlanCodeSequence": X,
    "PatientPrimaryLanguageCodeSequence": X,
    "ReferencedPatientSequence": X,
    # study / visit / request
    "StudyDate": Z,
    "StudyTime": Z,
    "AccessionNumber": Z,
    "StudyID": Z,
    "StudyDescription": X,
    "ReferringPhysicianName": Z,
    "ReferringPhysicianAddress": X,
    "ReferringPhysicianTelephoneNumbers": X,
    "ReferringPhysicianIdentificationSequence": X,
    "ConsultingPhysicianName": X,
    "PhysiciansOfRecord": X,
    "PhysiciansOfRecordIdentificationSequence": X,
    "NameOfPhysiciansReadingStudy": X,
    "PhysiciansReadingStudyIdentificationSequence": X,
    "RequestingPhysician": X,
    "RequestingService": X,
    "RequestAttributesSequence": X,
    "RequestedProcedureDescription": X,
    "RequestedProcedureID": X,
    "ReasonForStudy": X,
    "ReasonForTheRequestedProcedure": X,
    "AdmittingDiagnosesDescription": X,
    "AdmittingDiagnosesCodeSequence": X,
    "AdmissionID": X,
    "IssuerOfAdmissionID": X,
    "ReferencedStudySequence": X,
    "ReferencedPerformedProcedureStepSequence": X,
    "ScheduledProcedureStepDescription": X,
    "ScheduledProcedureStepID": X,
    "PerformedProcedureStepDescription": X,
    "PerformedProcedureStepID": X,
    "PerformedProcedureStepStartDate": X,
    "PerformedProcedureStepStartTime": X,
    "PerformedProcedureStepEndDate": X,
    "PerformedProcedureStepEndTime": X,
    "ImageComments": X,
    "StudyComments": X,
    "InterpretationText": X,
    "TextComments": X,
    "TextString": X,
    "IdentifyingComments": X,
    "AcquisitionComments": X,
    "SeriesDescription": X,
    "ProtocolName": D,
    "DerivationDescription": X,
    # series / equipment / operators
    "SeriesDate": X,
    "SeriesTime": X,
    "AcquisitionDate": X,
    "AcquisitionTime": X,
    "AcquisitionDateTime": X,
    "ContentDate": Z,
    "ContentTime": Z,
    "InstanceCreationDate": X,
    "InstanceCreationTime": X,
    "OverlayDate": X,
    "OverlayTime": X,
    "CurveDate": X,
    "CurveTime": X,
    "InstitutionName": X,
    "InstitutionAddress": X,
    "InstitutionCodeSequence": X,
    "InstitutionalDepartmentName": X,
    "StationName": X,
    "OperatorsName": X,
    "OperatorIdentificationSequence": X,
    "PerformingPhysicianName": X,
    "PerformingPhysicianIdentificationSequence": X,
    "DeviceSerialNumber": X,
    "PlateID": X,
    "CassetteID": X,
    "GantryID": X,
    "DetectorID": X,
    "GeneratorID": X,
    "ContentCreatorName": Z,
    "ContentCreatorIdentificationCodeSequence": X,
    "VerifyingObserverName": D,
    "VerifyingObserverIdentificationCodeSequence": Z,
    "PersonName": D,
    "PersonAddress": X,
    "PersonTelephoneNumbers": X,
    "ScheduledPerformingPhysicianName": X,
    "FillerOrderNumberImagingServiceRequest": Z,
    "PlacerOrderNumberImagingServiceRequest": Z,
    "OrderEnteredBy": X,
    "OrderEntererLocation": X,
    "OrderCallbackPhoneNumber": X,
    "DigitalSignaturesSequence": X,
    "OriginalAttributesSequence": X,
    "ModifiedAttributesSequence": X,
    "FrameComments": X,
    "ImagePathFilterPassBand": X,
    "DataSetTrailingPadding": X,
}
#: Dummy values by VR for "D" (PS3.15 §E.3.1 "a dummy value consistent with the VR").
_DUMMY = {"PN": "ANONYMOUS", "DA": "19000101", "TM": "000000", "DT": "19000101000000"}


class CannotDeidentify(Exception):
    """The object cannot be released de-identified (burned-in annotation)."""


def archive_secret(data_dir: Path) -> bytes:
    """The per-archive UID secret (``<data_dir>/deidentify.key``, 0600, made on first use)."""
    path = Path(data_dir) / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_bytes(32)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value.hex())
    try:
        os.link(tmp, path)  # the first writer wins; others read what it wrote
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return bytes.fromhex(path.read_text().strip())


def replace_uid(uid: str, secret: bytes) -> str:
    """A new UID for ``uid`` under the UUID-derived root 2.25 (PS3.5 §B.2), deterministic for
    one secret; at most 64 characters."""
    digest = hmac.new(secret, uid.encode("ascii", "replace"), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def _is_standard_uid(value: str) -> bool:
    return value in UID_dictionary


def deidentify(ds: Dataset, secret: bytes) -> Dataset:
    """De-identify ``ds`` in place (and return it) with the Basic Profile (module docstring).
    The file meta's Media Storage SOP Instance UID follows the new SOP Instance UID."""
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        raise CannotDeidentify(
            "the image has burned-in annotation (0028,0301 = YES); its pixels are not cleaned"
        )
    _clean(ds, secret)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _clean(ds: Dataset, secret: bytes) -> None:
    ds.remove_private_tags()
    for elem in list(ds):
        tag = elem.tag
        group = tag.group
        repeating = (group & 0xFF00) in (0x6000, 0x5000) and group % 2 == 0
        if repeating and ((group & 0xFF00) == 0x5000 or tag.element in (0x3000, 0x4000)):
            del ds[tag]  # curves, overlay data and overlay comments
            continue
        action = ACTIONS.get(elem.keyword)
        if action == X:
            del ds[tag]
            continue
        if action == Z:
            elem.value = [] if elem.VR == "SQ" else ""
            continue
        if action == D:
            if elem.VR == "SQ":
                elem.value = []
            else:
                elem.value = _DUMMY.get(elem.VR, "ANONYMIZED" if elem.VR != "UI" else elem.value)
            continue
        if elem.VR == "UI" and elem.value:
            values = elem.value if elem.VM > 1 else [elem.value]
            new = [
                str(v) if _is_standard_uid(str(v)) else replace_uid(str(v), secret) for v in values
            ]
            elem.value = new if elem.VM > 1 else new[0]
        elif elem.VR == "SQ":
            for item in elem.value:
                _clean(item, secret)
