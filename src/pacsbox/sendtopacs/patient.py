"""Patient / study data for converted objects (SPEC S2: manual entry) with validation of each
value against its VR (PS3.5 §6.2: LO 64, SH 16, PN 64 per component group, DA, TM, CS).

A worklist lookup (later) fills the same :class:`PatientInfo`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass, field

from pacsbox.sendtopacs.sopclasses import is_uid


class PatientInfoError(ValueError):
    """One or more values are not valid; ``errors`` lists each as ``field: reason``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")  # no control characters, no backslash (VM sep)


def parse_date(text: str) -> str:
    """``YYYYMMDD`` or ``YYYY-MM-DD`` (or ``YYYY.MM.DD``) → DA ``YYYYMMDD`` (a real date)."""
    raw = text.strip().replace("-", "").replace(".", "").replace("/", "")
    if not re.fullmatch(r"\d{8}", raw):
        raise ValueError(f"{text!r} is not a date (YYYYMMDD or YYYY-MM-DD)")
    try:
        dt.date(int(raw[:4]), int(raw[4:6]), int(raw[6:]))
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid date: {exc}") from None
    return raw


def parse_time(text: str) -> str:
    """``HHMMSS``, ``HH:MM[:SS]`` → TM ``HHMMSS`` (PS3.5 §6.2 TM)."""
    raw = text.strip().replace(":", "")
    if "." in raw:
        raw = raw.split(".", 1)[0]
    if not re.fullmatch(r"\d{4}(\d{2})?", raw):
        raise ValueError(f"{text!r} is not a time (HHMMSS or HH:MM:SS)")
    raw = raw.ljust(6, "0")
    hh, mm, ss = int(raw[:2]), int(raw[2:4]), int(raw[4:6])
    if hh > 23 or mm > 59 or ss > 60:
        raise ValueError(f"{text!r} is not a valid time")
    return raw


@dataclass
class PatientInfo:
    """What goes into the Patient and General Study modules (PS3.3 §C.7.1.1, §C.7.2.1)."""

    patient_id: str = ""
    last_name: str = ""
    first_name: str = ""
    middle_name: str = ""
    name_prefix: str = ""
    name_suffix: str = ""
    birth_date: str = ""
    sex: str = ""
    accession_number: str = ""
    study_description: str = ""
    study_date: str = ""
    study_time: str = ""
    referring_physician: str = ""  #: PN, ``LAST^FIRST``
    study_id: str = ""
    study_instance_uid: str = ""  #: given → every object of the batch joins that study
    issuer_of_patient_id: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def patient_name(self) -> str:
        """PN from the parts (PS3.5 §6.2.1), trailing empty components dropped."""
        parts = [
            self.last_name,
            self.first_name,
            self.middle_name,
            self.name_prefix,
            self.name_suffix,
        ]
        return "^".join(p.strip() for p in parts).rstrip("^")

    def set_name(self, pn: str) -> None:
        """Fill the parts from ``LAST^FIRST^MIDDLE^PREFIX^SUFFIX``."""
        parts = (pn.split("=", 1)[0].split("^") + [""] * 5)[:5]
        if pn.count("^") > 4:
            raise PatientInfoError([f"patient name: {pn!r} has more than 5 components"])
        (
            self.last_name,
            self.first_name,
            self.middle_name,
            self.name_prefix,
            self.name_suffix,
        ) = (p.strip() for p in parts)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def validate(self, *, require: bool = True) -> PatientInfo:
        """Check every value; normalise dates/times/sex; raise :class:`PatientInfoError`
        listing all problems. ``require``: Patient ID and last name must be given (SPEC S2)."""
        errors: list[str] = []

        def text(name: str, value: str, limit: int) -> None:
            if len(value) > limit:
                errors.append(f"{name}: longer than {limit} characters ({len(value)})")
            if _CONTROL.search(value):
                errors.append(f"{name}: control characters or '\\' are not allowed")

        self.patient_id = self.patient_id.strip()
        if require and not self.patient_id:
            errors.append("patient id: required")
        text("patient id", self.patient_id, 64)
        text("issuer of patient id", self.issuer_of_patient_id, 64)
        if require and not self.last_name.strip():
            errors.append("last name: required")
        for label, part in (
            ("last name", self.last_name),
            ("first name", self.first_name),
            ("middle name", self.middle_name),
            ("name prefix", self.name_prefix),
            ("name suffix", self.name_suffix),
        ):
            if "^" in part or "=" in part:
                errors.append(f"{label}: '^' and '=' are not allowed")
            text(label, part, 64)
        if len(self.patient_name) > 64:
            errors.append("patient name: longer than 64 characters in all")
        text("accession number", self.accession_number, 16)
        text("study id", self.study_id, 16)
        text("study description", self.study_description, 64)
        text("referring physician", self.referring_physician, 64)
        if self.referring_physician.count("^") > 4:
            errors.append("referring physician: more than 5 name components")
        sex = self.sex.strip().upper()
        sex = {"MALE": "M", "FEMALE": "F", "OTHER": "O"}.get(sex, sex)
        if sex not in ("", "M", "F", "O"):
            errors.append(f"sex: {self.sex!r} must be M, F, O or empty")
        self.sex = sex
        for attr in ("birth_date", "study_date"):
            value = getattr(self, attr)
            if value:
                try:
                    setattr(self, attr, parse_date(value))
                except ValueError as exc:
                    errors.append(f"{attr.replace('_', ' ')}: {exc}")
        if self.birth_date and self.birth_date > dt.date.today().strftime("%Y%m%d"):
            errors.append("birth date: in the future")
        if self.study_time:
            try:
                self.study_time = parse_time(self.study_time)
            except ValueError as exc:
                errors.append(f"study time: {exc}")
        if self.study_instance_uid and not is_uid(self.study_instance_uid):
            errors.append(f"study instance uid: {self.study_instance_uid!r} is not a valid UID")
        if errors:
            raise PatientInfoError(errors)
        return self
