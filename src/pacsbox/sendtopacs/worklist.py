"""Worklist devices and patient / study search for sendtopacs (SPEC S2).

Three kinds of device:

* ``mwl`` — Modality Worklist C-FIND (PS3.4 Annex K, §K.6: Modality Worklist Information Model
  – FIND, SOP Class 1.2.840.10008.5.1.4.31). The identifier (§K.6.1.2.2) carries a Scheduled
  Procedure Step Sequence with Modality, Scheduled Station AE Title and SPS Start Date (one day
  or a range, PS3.4 §C.2.2.2.5), and Patient ID / Patient's Name (wildcards ``*`` ``?``,
  §C.2.2.2.4). Each match gives the patient, the accession number, the requested procedure,
  the Study Instance UID when the RIS assigns one, the referring physician and the SPS.
* ``qr`` — Query/Retrieve C-FIND (PS3.4 Annex C, §C.6): root model ``PATIENT`` (Patient Root,
  1.2.840.10008.5.1.4.1.2.1.1) at level ``PATIENT`` or ``STUDY``; ``STUDY`` (Study Root,
  1.2.840.10008.5.1.4.1.2.2.1) at level ``STUDY``; ``PATIENT_STUDY`` = the patients first
  (Patient Root, PATIENT level), then each patient's studies (Patient Root, STUDY level with
  the Patient ID as the parent's unique key, §C.4.1.2.2 hierarchical search). A Patient Root
  search at STUDY level whose Patient ID is not one exact value is done the PATIENT_STUDY way,
  since that level needs the patient's unique key.
* ``http`` — an external HTTP worklist answering JSON: ``GET`` of a URL template with the
  placeholders ``{patient_id} {patient_name} {date} {modality} {accession}`` (each
  URL-quoted), an optional header (``Authorization: Bearer …``), a dotted path to the list of
  records in the answer and a mapping ``field → dotted path`` for each record.

:func:`search` returns :class:`WorklistEntry` objects whose ``patient`` is the
:class:`~pacsbox.sendtopacs.patient.PatientInfo` a conversion or a "replace full worklist
info" uses. Every failure raises :class:`WorklistError` with a sentence saying what went wrong
(association rejected with the peer's reason, connection refused, time-out, a C-FIND failure
status, an HTTP error, an answer that is not the expected JSON).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pydicom.dataset import Dataset

from pacsbox.sendtopacs.patient import PatientInfo, PatientInfoError, parse_date

KINDS = ("mwl", "qr", "http")
ROOT_MODELS = ("WORKLIST", "PATIENT", "STUDY", "PATIENT_STUDY")
LEVELS = ("PATIENT", "STUDY")

MWL_FIND = "1.2.840.10008.5.1.4.31"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"

#: The PatientInfo / entry fields an HTTP mapping may fill (``patient_name`` is a PN string
#: ``LAST^FIRST``; ``last_name`` / ``first_name`` may be mapped separately instead).
HTTP_FIELDS = (
    "patient_id",
    "patient_name",
    "last_name",
    "first_name",
    "birth_date",
    "sex",
    "issuer_of_patient_id",
    "accession_number",
    "study_description",
    "study_instance_uid",
    "study_date",
    "study_time",
    "study_id",
    "referring_physician",
    "modality",
    "scheduled_station_ae",
    "sps_start_date",
    "sps_start_time",
    "sps_description",
    "sps_id",
    "requested_procedure_id",
)

#: Placeholders of an HTTP URL template.
URL_PLACEHOLDERS = ("patient_id", "patient_name", "date", "modality", "accession")

_MAX_HTTP_BYTES = 16 * 1024 * 1024
_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


class WorklistError(RuntimeError):
    """A worklist search failed; the message says why."""


class WorklistConfigError(ValueError):
    """A worklist device or a query is not valid."""


@dataclass
class WorklistDevice:
    """A worklist source (settings "Worklist" tab, SPEC S2) with its default search values."""

    name: str
    kind: str = "mwl"  #: mwl | qr | http
    ae_title: str = ""  #: called AE title (mwl, qr)
    host: str = ""
    port: int = 0
    timeout: float = 30.0  #: seconds (association, DIMSE, network, HTTP)
    description: str = ""
    character_set: str = ""  #: Specific Character Set sent in the identifier ("" = none)
    #: qr: PATIENT | STUDY | PATIENT_STUDY (WORKLIST = the MWL model, i.e. kind mwl)
    root_model: str = "STUDY"
    level: str = "STUDY"  #: qr: PATIENT | STUDY (PATIENT only with the PATIENT root)
    url: str = ""  #: http: URL template, e.g. https://his/api/orders?pid={patient_id}
    auth_header: str = ""  #: http: one header line, e.g. "Authorization: Bearer abc"
    results_path: str = ""  #: http: dotted path to the list in the answer ("" = the answer)
    mapping: dict[str, str] = field(default_factory=dict)  #: http: field -> dotted path
    # -- default search parameters ("WORKLIST DEVICE" window) --------------------------------
    modality: str = ""  #: mwl: default modality ("" = all)
    station_ae: str = ""  #: mwl: default Scheduled Station AE Title ("" = all)
    date: str = ""  #: "" (any), "today", YYYYMMDD, YYYYMMDD-YYYYMMDD
    fill_patient_id: bool = True  #: use a Patient ID parsed from a file name / DICOM file
    patient_id_wildcard: bool = False  #: ... with a trailing "*"
    fill_patient_name: bool = True  #: use a Patient's Name parsed from a file name / DICOM
    patient_name_wildcard: bool = True  #: ... with a trailing "*"
    worklist_only: bool = False  #: non-DICOM patient data must come from this device
    max_results: int = 500  #: more matches → the search is cancelled (association aborted)
    default: bool = False

    def __post_init__(self) -> None:
        if self.kind == "qr" and self.root_model.upper() == "WORKLIST":
            self.kind = "mwl"

    def validate(self) -> WorklistDevice:
        """Check the values; raise :class:`WorklistConfigError` naming the first problem."""
        n = self.name
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", n or ""):
            raise WorklistConfigError(f"worklist device name {n!r}: letters, digits, _ . - (≤ 64)")
        self.kind = self.kind.lower().strip()
        if self.kind not in KINDS:
            raise WorklistConfigError(f"worklist device {n}: kind must be one of {KINDS}")
        self.root_model = self.root_model.upper().strip()
        self.level = self.level.upper().strip()
        if self.kind == "mwl":
            self.root_model = "WORKLIST"
        if self.kind in ("mwl", "qr"):
            self.ae_title = self.ae_title.strip()
            if not _AE.match(self.ae_title):
                raise WorklistConfigError(
                    f"worklist device {n}: AE title {self.ae_title!r}: 1-16 printable "
                    "characters, no backslash"
                )
            if not self.host or len(self.host) > 255 or any(c.isspace() for c in self.host):
                raise WorklistConfigError(f"worklist device {n}: host {self.host!r} is not valid")
            if not 1 <= int(self.port) <= 65535:
                raise WorklistConfigError(f"worklist device {n}: port {self.port} not in 1..65535")
            self.port = int(self.port)
        if self.kind == "qr":
            if self.root_model not in ("PATIENT", "STUDY", "PATIENT_STUDY"):
                raise WorklistConfigError(
                    f"worklist device {n}: root model {self.root_model!r}: PATIENT, STUDY or "
                    "PATIENT_STUDY"
                )
            if self.level not in LEVELS:
                raise WorklistConfigError(f"worklist device {n}: level must be PATIENT or STUDY")
            if self.root_model == "STUDY" and self.level == "PATIENT":
                raise WorklistConfigError(
                    f"worklist device {n}: the STUDY root model has no PATIENT level "
                    "(PS3.4 §C.6.2); use root PATIENT"
                )
        if self.kind == "http":
            parsed = urllib.parse.urlsplit(self.url.replace("{", "").replace("}", ""))
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise WorklistConfigError(
                    f"worklist device {n}: url {self.url!r} must be an http(s) URL template"
                )
            for name in re.findall(r"{([^{}]*)}", self.url):
                if name not in URL_PLACEHOLDERS:
                    raise WorklistConfigError(
                        f"worklist device {n}: unknown placeholder {{{name}}} in the url "
                        f"(known: {', '.join('{' + p + '}' for p in URL_PLACEHOLDERS)})"
                    )
            if self.auth_header and (
                ":" not in self.auth_header or "\n" in self.auth_header or "\r" in self.auth_header
            ):
                raise WorklistConfigError(
                    f"worklist device {n}: auth_header must be one 'Name: value' line"
                )
            if not isinstance(self.mapping, dict) or not self.mapping:
                raise WorklistConfigError(
                    f"worklist device {n}: an http device needs a mapping field -> JSON path"
                )
            for key, path in self.mapping.items():
                if key not in HTTP_FIELDS:
                    raise WorklistConfigError(
                        f"worklist device {n}: mapping key {key!r} is not one of "
                        + ", ".join(HTTP_FIELDS)
                    )
                if not isinstance(path, str) or not path:
                    raise WorklistConfigError(
                        f"worklist device {n}: mapping of {key} must be a dotted path"
                    )
        if self.modality and not re.fullmatch(r"[A-Z0-9_]{1,16}", self.modality):
            raise WorklistConfigError(f"worklist device {n}: modality {self.modality!r} (CS)")
        if self.station_ae and not _AE.match(self.station_ae):
            raise WorklistConfigError(f"worklist device {n}: station AE {self.station_ae!r}")
        if self.date:
            try:
                date_range(self.date)
            except WorklistConfigError as exc:
                raise WorklistConfigError(f"worklist device {n}: {exc}") from None
        if not 0 < float(self.timeout) <= 3600:
            raise WorklistConfigError(f"worklist device {n}: timeout must be in (0, 3600] s")
        if not 1 <= int(self.max_results) <= 100_000:
            raise WorklistConfigError(f"worklist device {n}: max_results in 1..100000")
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorklistDevice:
        """From the settings file; unknown keys are ignored (a newer version may add some)."""
        if not isinstance(data, dict):
            raise WorklistConfigError("a worklist device must be a JSON object")
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise WorklistConfigError(f"worklist device: {exc}") from exc


@dataclass
class WorklistQuery:
    """Search values. Empty = the device's default; ``"*"`` = explicitly any value.

    ``date`` is ``today``, ``YYYYMMDD``, ``YYYYMMDD-YYYYMMDD`` (either end may be left open) or
    empty; for MWL it matches the SPS Start Date, for Q/R the Study Date."""

    patient_id: str = ""
    patient_name: str = ""
    accession_number: str = ""
    modality: str = ""
    station_ae: str = ""
    date: str = ""
    study_instance_uid: str = ""

    def with_defaults(self, device: WorklistDevice) -> WorklistQuery:
        """This query with the device's default modality / station AE / date filled in where
        the query leaves them empty (``"*"`` stays: it overrides a default with "any")."""
        q = WorklistQuery(**asdict(self))
        q.modality = q.modality or device.modality
        q.station_ae = q.station_ae or device.station_ae
        q.date = q.date or device.date
        for name in ("patient_id", "patient_name", "modality", "station_ae", "date"):
            if getattr(q, name).strip() == "*":
                setattr(q, name, "")
        return q

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def validate(self) -> WorklistQuery:
        """Each value must fit its attribute's VR (PS3.5 §6.2; wildcards allowed): raise
        :class:`WorklistConfigError` naming the first that does not."""
        checks = (
            ("patient id", self.patient_id, 64),
            ("patient name", self.patient_name, 64 * 3 + 2),
            ("accession number", self.accession_number, 16),
            ("modality", self.modality, 16),
            ("station AE", self.station_ae, 16),
            ("study instance uid", self.study_instance_uid, 64),
        )
        for label, value, limit in checks:
            if len(value) > limit:
                raise WorklistConfigError(f"search {label}: longer than {limit} characters")
            if re.search(r"[\x00-\x1f\x7f\\]", value):
                raise WorklistConfigError(
                    f"search {label}: control characters and '\\' are not allowed"
                )
        if self.modality and not re.fullmatch(r"[A-Z0-9_ *?]+", self.modality):
            raise WorklistConfigError(f"search modality {self.modality!r}: upper-case CS")
        if self.study_instance_uid and not re.fullmatch(r"[0-9.]+", self.study_instance_uid):
            raise WorklistConfigError(f"search study uid {self.study_instance_uid!r}: a UID")
        date_range(self.date)
        return self


@dataclass
class WorklistEntry:
    """One match: the patient / study data to use, plus what the worklist said about the
    scheduled step (MWL) — shown in a search window, not written by the converter."""

    patient: PatientInfo
    modality: str = ""  #: SPS Modality (MWL) / Modalities in Study (Q/R)
    scheduled_station_ae: str = ""
    sps_start_date: str = ""
    sps_start_time: str = ""
    sps_description: str = ""
    sps_id: str = ""
    requested_procedure_id: str = ""
    source: str = ""  #: the device's name
    problem: str = ""  #: a value that does not fit its VR (the entry cannot be used as is)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["patient"] = self.patient.as_dict()
        out["patient"]["patient_name"] = self.patient.patient_name
        return out

    def label(self) -> str:
        p = self.patient
        parts = [p.patient_id, p.patient_name, p.birth_date, p.accession_number]
        parts += [self.modality, self.sps_start_date or p.study_date, p.study_description]
        return " | ".join(x for x in parts if x)


# -- values ------------------------------------------------------------------------------------
def date_range(text: str, today: dt.date | None = None) -> str:
    """``today`` / ``YYYYMMDD`` / ``YYYY-MM-DD`` / a range ``A-B`` (``YYYYMMDD-YYYYMMDD``,
    ``-B``, ``A-``) → a DA matching value (PS3.4 §C.2.2.2.5.1)."""
    raw = text.strip()
    if not raw:
        return ""
    if raw.lower() == "today":
        return (today or dt.date.today()).strftime("%Y%m%d")
    compact = raw.replace(".", "").replace("/", "")
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", compact):
        compact = compact.replace("-", "")
    try:
        if "-" in compact:
            start, _, end = compact.partition("-")
            start = parse_date(start) if start else ""
            end = parse_date(end) if end else ""
            if not start and not end:
                raise ValueError("empty range")
            if start and end and start > end:
                raise ValueError("the range ends before it starts")
            return f"{start}-{end}"
        return parse_date(compact)
    except ValueError as exc:
        raise WorklistConfigError(
            f"date {text!r}: today, YYYYMMDD or YYYYMMDD-YYYYMMDD ({exc})"
        ) from None


def _needs_unicode(values: list[str]) -> bool:
    return not all(v.isascii() for v in values)


def _str(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _entry_from_dataset(ds: Dataset, device: WorklistDevice) -> WorklistEntry:
    p = PatientInfo(
        patient_id=_str(ds, "PatientID"),
        birth_date=_str(ds, "PatientBirthDate"),
        sex=_str(ds, "PatientSex"),
        issuer_of_patient_id=_str(ds, "IssuerOfPatientID"),
        accession_number=_str(ds, "AccessionNumber"),
        study_instance_uid=_str(ds, "StudyInstanceUID"),
        referring_physician=_str(ds, "ReferringPhysicianName"),
    )
    entry = WorklistEntry(p, source=device.name)
    problems: list[str] = []
    try:
        p.set_name(_str(ds, "PatientName"))
    except PatientInfoError as exc:
        problems.extend(exc.errors)
    if device.kind == "mwl":
        p.study_description = _str(ds, "RequestedProcedureDescription")
        entry.requested_procedure_id = _str(ds, "RequestedProcedureID")
        seq = ds.get("ScheduledProcedureStepSequence") or []
        if seq:
            sps = seq[0]
            entry.modality = _str(sps, "Modality")
            entry.scheduled_station_ae = _str(sps, "ScheduledStationAETitle")
            entry.sps_start_date = _str(sps, "ScheduledProcedureStepStartDate")
            entry.sps_start_time = _str(sps, "ScheduledProcedureStepStartTime")
            entry.sps_description = _str(sps, "ScheduledProcedureStepDescription")
            entry.sps_id = _str(sps, "ScheduledProcedureStepID")
        if not p.study_description:
            p.study_description = entry.sps_description
    else:
        p.study_description = _str(ds, "StudyDescription")
        p.study_date = _str(ds, "StudyDate")
        p.study_time = _str(ds, "StudyTime")
        p.study_id = _str(ds, "StudyID")
        entry.modality = _str(ds, "ModalitiesInStudy")
    try:
        p.validate(require=False)
    except PatientInfoError as exc:
        problems.extend(exc.errors)
    entry.problem = "; ".join(problems)
    return entry


# -- DICOM C-FIND -----------------------------------------------------------------------------
def mwl_identifier(query: WorklistQuery, device: WorklistDevice) -> Dataset:
    """The MWL C-FIND identifier (PS3.4 §K.6.1.2.2, return keys of Table K.6-1)."""
    ds = Dataset()
    values = [query.patient_name, query.patient_id, query.accession_number]
    charset = device.character_set or ("ISO_IR 192" if _needs_unicode(values) else "")
    if charset:
        ds.SpecificCharacterSet = charset
    sps = Dataset()
    sps.ScheduledStationAETitle = query.station_ae
    day = date_range(query.date)
    sps.ScheduledProcedureStepStartDate = day
    sps.ScheduledProcedureStepStartTime = ""
    sps.Modality = query.modality
    sps.ScheduledPerformingPhysicianName = ""
    sps.ScheduledProcedureStepDescription = ""
    sps.ScheduledProcedureStepID = ""
    sps.ScheduledStationName = ""
    ds.ScheduledProcedureStepSequence = [sps]
    ds.RequestedProcedureID = ""
    ds.RequestedProcedureDescription = ""
    ds.StudyInstanceUID = query.study_instance_uid
    ds.AccessionNumber = query.accession_number
    ds.ReferringPhysicianName = ""
    ds.PatientName = query.patient_name
    ds.PatientID = query.patient_id
    ds.IssuerOfPatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    return ds


def qr_identifier(query: WorklistQuery, device: WorklistDevice, level: str) -> Dataset:
    """A Q/R C-FIND identifier at PATIENT or STUDY level (PS3.4 §C.6.1.1.2 / §C.6.2.1.2)."""
    ds = Dataset()
    values = [query.patient_name, query.patient_id, query.accession_number]
    charset = device.character_set or ("ISO_IR 192" if _needs_unicode(values) else "")
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = level
    ds.PatientName = query.patient_name
    ds.PatientID = query.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.IssuerOfPatientID = ""
    if level == "STUDY":
        ds.StudyInstanceUID = query.study_instance_uid
        ds.StudyDate = date_range(query.date)
        ds.StudyTime = ""
        ds.AccessionNumber = query.accession_number
        ds.StudyID = ""
        ds.StudyDescription = ""
        ds.ReferringPhysicianName = ""
        ds.ModalitiesInStudy = ""
    return ds


_FIND_STATUS = {
    0xA700: "refused: out of resources",
    0xA900: "identifier does not match SOP class",
    0x0122: "SOP class not supported",
    0xFE00: "cancelled",
}


def _find_status_text(code: int) -> str:
    if code in _FIND_STATUS:
        return _FIND_STATUS[code]
    if code & 0xF000 == 0xC000:
        return "unable to process"
    return "failure"


class _Finder:
    """One association to a C-FIND SCP, closed at the end (PS3.7 §9.1.2)."""

    def __init__(self, device: WorklistDevice, calling: str, model: str) -> None:
        from pynetdicom.presentation import build_context

        from pacsbox.sendtopacs.send import _associate, _association_problem, _make_ae

        self.device = device
        self.model = model
        ae = _make_ae(device, calling)  # type: ignore[arg-type]
        self.assoc: Any = _associate(ae, device, [build_context(model)])  # type: ignore[arg-type]
        if not self.assoc.is_established:
            raise WorklistError(
                f"worklist {device.name}: {_association_problem(self.assoc, device)}"  # type: ignore[arg-type]
            )
        if not self.assoc.accepted_contexts:
            self.close()
            raise WorklistError(
                f"worklist {device.name}: {device.ae_title} does not accept C-FIND for "
                f"{_model_name(model)}"
            )

    def find(self, identifier: Dataset) -> Iterator[Dataset]:
        where = f"{self.device.ae_title}@{self.device.host}:{self.device.port}"
        for status, found in self.assoc.send_c_find(identifier, self.model):
            if not status or "Status" not in status:
                raise WorklistError(
                    f"worklist {self.device.name}: no C-FIND response from {where} "
                    f"(time-out after {self.device.timeout:g} s or association aborted)"
                )
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                if found is not None:
                    yield found
                continue
            if code == 0:
                return
            comment = str(status.get("ErrorComment", "") or "")
            raise WorklistError(
                f"worklist {self.device.name}: C-FIND failed at {where}: status {code:04X} "
                f"{_find_status_text(code)}" + (f" ({comment})" if comment else "")
            )

    def abort(self) -> None:
        if self.assoc.is_established:
            self.assoc.abort()

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


def _model_name(uid: str) -> str:
    return {
        MWL_FIND: "Modality Worklist Information Model - FIND",
        PATIENT_ROOT_FIND: "Patient Root Query/Retrieve Information Model - FIND",
        STUDY_ROOT_FIND: "Study Root Query/Retrieve Information Model - FIND",
    }.get(uid, uid)


def _collect(finder: _Finder, identifier: Dataset, limit: int, into: list[Dataset]) -> None:
    for ds in finder.find(identifier):
        if len(into) >= limit:
            finder.abort()
            raise WorklistError(
                f"worklist {finder.device.name}: more than {limit} matches — narrow the search"
            )
        into.append(ds)


@contextmanager
def _quiet() -> Iterator[None]:
    """pynetdicom formats every C-FIND response identifier and every PDU for its debug log
    even when nothing logs at that level (~5 ms per match, 10x the rest of a search): off
    while we search, restored after (the pacsbox server keeps its own choice)."""
    from pynetdicom import _config

    saved = _config.LOG_RESPONSE_IDENTIFIERS, _config.LOG_HANDLER_LEVEL
    _config.LOG_RESPONSE_IDENTIFIERS, _config.LOG_HANDLER_LEVEL = False, "none"
    try:
        yield
    finally:
        _config.LOG_RESPONSE_IDENTIFIERS, _config.LOG_HANDLER_LEVEL = saved


FinderFn = Callable[[str], "_Finder"]


def _search_mwl(
    device: WorklistDevice, query: WorklistQuery, finder_for: FinderFn
) -> list[Dataset]:
    found: list[Dataset] = []
    _collect(finder_for(MWL_FIND), mwl_identifier(query, device), device.max_results, found)
    return found


def _search_qr(device: WorklistDevice, query: WorklistQuery, finder_for: FinderFn) -> list[Dataset]:
    root, level = device.root_model, device.level
    exact_pid = bool(query.patient_id) and not re.search(r"[*?\\]", query.patient_id)
    found: list[Dataset] = []
    if root == "STUDY":
        ident = qr_identifier(query, device, "STUDY")
        _collect(finder_for(STUDY_ROOT_FIND), ident, device.max_results, found)
        return found
    finder = finder_for(PATIENT_ROOT_FIND)
    if root == "PATIENT" and level == "PATIENT":
        _collect(finder, qr_identifier(query, device, "PATIENT"), device.max_results, found)
        return found
    if exact_pid and root == "PATIENT":
        patients = [Dataset()]
        patients[0].PatientID = query.patient_id
    else:
        patients = []
        _collect(finder, qr_identifier(query, device, "PATIENT"), device.max_results, patients)
    studies: list[Dataset] = []
    for pat in patients:
        pid = _str(pat, "PatientID")
        if not pid:
            continue
        sub = WorklistQuery(**query.as_dict())
        sub.patient_id = pid
        sub.patient_name = ""
        ident = qr_identifier(sub, device, "STUDY")
        found = []
        _collect(finder, ident, device.max_results - len(studies), found)
        for st in found:  # the patient-level answer fills what a study answer left out
            for kw in ("PatientName", "PatientBirthDate", "PatientSex", "IssuerOfPatientID"):
                if not _str(st, kw) and _str(pat, kw):
                    setattr(st, kw, pat.get(kw))
        studies.extend(found)
    return studies


# -- HTTP JSON ---------------------------------------------------------------------------------
def dotted(data: Any, path: str) -> Any:
    """``a.b.0.c`` → data["a"]["b"][0]["c"]; None when a step is missing."""
    cur = data
    for step in path.split(".") if path else []:
        if isinstance(cur, dict):
            cur = cur.get(step)
        elif isinstance(cur, list) and re.fullmatch(r"-?\d+", step):
            idx = int(step)
            cur = cur[idx] if -len(cur) <= idx < len(cur) else None
        else:
            return None
        if cur is None:
            return None
    return cur


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to another http(s) URL (urllib would also follow ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def] # noqa: ANN001, ANN201, PLR0913
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise urllib.error.HTTPError(
                newurl, code, f"redirect to a non-HTTP URL refused ({msg})", headers, fp
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def http_url(device: WorklistDevice, query: WorklistQuery) -> str:
    """The URL template with each placeholder replaced by its URL-quoted value."""
    values = {
        "patient_id": query.patient_id,
        "patient_name": query.patient_name,
        "date": date_range(query.date),
        "modality": query.modality,
        "accession": query.accession_number,
    }
    return re.sub(
        r"{([a-z_]+)}",
        lambda m: urllib.parse.quote(values.get(m.group(1), ""), safe=""),
        device.url,
    )


def _search_http(device: WorklistDevice, query: WorklistQuery) -> list[WorklistEntry]:
    url = http_url(device, query)
    headers = {"Accept": "application/json", "User-Agent": "sendtopacs"}
    if device.auth_header:
        name, _, value = device.auth_header.partition(":")
        headers[name.strip()] = value.strip()
    req = urllib.request.Request(url, headers=headers, method="GET")
    shown = urllib.parse.urlsplit(url)._replace(query="").geturl()
    try:
        with _OPENER.open(req, timeout=device.timeout) as resp:
            raw = resp.read(_MAX_HTTP_BYTES + 1)
    except urllib.error.HTTPError as exc:
        body = exc.read(300).decode("utf-8", "replace").strip()
        raise WorklistError(
            f"worklist {device.name}: {shown} answered HTTP {exc.code} {exc.reason}"
            + (f": {body}" if body else "")
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            raise WorklistError(
                f"worklist {device.name}: {shown}: no answer within {device.timeout:g} s"
            ) from None
        if isinstance(reason, ConnectionRefusedError):
            raise WorklistError(
                f"worklist {device.name}: {shown}: connection refused (nothing listening?)"
            ) from None
        raise WorklistError(f"worklist {device.name}: {shown}: {reason}") from None
    except TimeoutError:
        raise WorklistError(
            f"worklist {device.name}: {shown}: no answer within {device.timeout:g} s"
        ) from None
    except OSError as exc:
        raise WorklistError(f"worklist {device.name}: {shown}: {exc}") from None
    if len(raw) > _MAX_HTTP_BYTES:
        raise WorklistError(f"worklist {device.name}: the answer is larger than 16 MiB")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except RecursionError:
        raise WorklistError(f"worklist {device.name}: the answer is nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WorklistError(f"worklist {device.name}: the answer is not JSON ({exc})") from None
    records = dotted(data, device.results_path)
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list):
        where = f"at {device.results_path!r}" if device.results_path else "at the top level"
        raise WorklistError(f"worklist {device.name}: the answer has no list of records {where}")
    if len(records) > device.max_results:
        raise WorklistError(
            f"worklist {device.name}: more than {device.max_results} matches — narrow the search"
        )
    return [_entry_from_json(rec, device, i) for i, rec in enumerate(records)]


def _entry_from_json(record: Any, device: WorklistDevice, index: int) -> WorklistEntry:
    entry = WorklistEntry(PatientInfo(), source=device.name)
    if not isinstance(record, dict):
        entry.problem = f"record {index} is not a JSON object"
        return entry
    problems: list[str] = []
    p = entry.patient
    for key, path in device.mapping.items():
        value = dotted(record, path)
        if value is None:
            continue
        if isinstance(value, dict | list):
            problems.append(f"{key}: {path!r} is not a single value")
            continue
        text = str(value).strip() if not isinstance(value, bool) else str(value).lower()
        if key == "patient_name":
            try:
                p.set_name(text)
            except PatientInfoError as exc:
                problems.extend(exc.errors)
        elif hasattr(p, key):
            setattr(p, key, text)
        else:
            setattr(entry, key, text)
    for attr in ("sps_start_date",):
        value = getattr(entry, attr)
        if value:
            try:
                setattr(entry, attr, parse_date(value))
            except ValueError as exc:
                problems.append(f"{attr}: {exc}")
    try:
        p.validate(require=False)
    except PatientInfoError as exc:
        problems.extend(exc.errors)
    entry.problem = "; ".join(problems)
    return entry


# -- public ------------------------------------------------------------------------------------
class WorklistSession:
    """Several searches of one device; a DICOM device's searches share one association per
    information model (opened at the first search, released by :meth:`close`; a search that
    fails drops its association and the next one opens a new one). Used by
    :func:`naming.auto_map` so a batch of files costs one association, not one per file."""

    def __init__(self, device: WorklistDevice, calling: str = "SENDTOPACS") -> None:
        self.device = device.validate()
        self.calling = calling
        self._finders: dict[str, _Finder] = {}

    def _finder(self, model: str) -> _Finder:
        finder = self._finders.get(model)
        if finder is None or not finder.assoc.is_established:
            finder = self._finders[model] = _Finder(self.device, self.calling, model)
        return finder

    def search(self, query: WorklistQuery) -> list[WorklistEntry]:
        """Like :func:`search`, on this session's association(s)."""
        device = self.device
        q = query.with_defaults(device).validate()  # nothing invalid goes on the wire
        if device.kind == "http":
            return _search_http(device, q)
        with _quiet():
            try:
                if device.kind == "mwl":
                    found = _search_mwl(device, q, self._finder)
                else:
                    found = _search_qr(device, q, self._finder)
            except WorklistError:
                self.close()  # whatever state the association is in, start afresh next time
                raise
        return [_entry_from_dataset(ds, device) for ds in found]

    def close(self) -> None:
        with _quiet():
            for finder in self._finders.values():
                finder.close()
        self._finders.clear()

    def __enter__(self) -> WorklistSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def search(
    device: WorklistDevice, query: WorklistQuery, calling: str = "SENDTOPACS"
) -> list[WorklistEntry]:
    """Search ``device`` (its default values fill what ``query`` leaves empty, see
    :meth:`WorklistQuery.with_defaults`) and return the matches in the order the peer sent
    them; one association (released at the end). Raises :class:`WorklistError` (or
    :class:`WorklistConfigError` for a bad device or search value) with a readable reason."""
    with WorklistSession(device, calling) as session:
        return session.search(query)


def echo(device: WorklistDevice, calling: str = "SENDTOPACS") -> tuple[bool, str]:
    """C-ECHO a DICOM worklist device, or GET an HTTP one with empty search values:
    (ok, message)."""
    device.validate()
    if device.kind == "http":
        try:
            found = _search_http(device, WorklistQuery())
        except WorklistError as exc:
            return False, str(exc)
        return True, f"{device.name}: HTTP worklist answered ({len(found)} record(s))"
    from pacsbox.sendtopacs.send import echo_device

    return echo_device(device, calling)  # type: ignore[arg-type]
