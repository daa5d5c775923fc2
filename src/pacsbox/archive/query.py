"""The one query engine (DESIGN.md): a query object → SQL over the index → streamed rows.

C-FIND (PS3.4 Annex C), and later QIDO-RS and the web study list, build a :class:`Query`
(level, keys each with a matching type and value, which keys to return) and iterate
:func:`run`. Nothing here depends on pynetdicom or needs a pydicom Dataset.

Matching follows PS3.4 §C.2.2.2:

- single value (§C.2.2.2.1), universal (§C.2.2.2.2, an empty value or a lone ``*``),
  wildcard ``*``/``?`` (§C.2.2.2.3; SQL ``%``, ``_`` and the escape character are escaped),
  date / time / datetime ranges ``a-b``, ``a-``, ``-b`` (§C.2.2.2.5) including combined
  date + time range matching (§C.2.2.2.5.1, when the requestor negotiated it), list of UIDs
  (§C.2.2.2.2.4, ``\\``-separated), sequence matching (§C.2.2.2.6).
- Person names match case-insensitively when ``pn_case_insensitive`` (default) through the
  upper-cased ``patient.patient_name_search`` column (migration 0002), so ``SMITH*`` uses an
  index on SQLite (GLOB on a binary index), PostgreSQL (LIKE on a ``varchar_pattern_ops``
  index) and MariaDB (LIKE prefix range).
- A ``\\``-separated value of a non-UID key (e.g. ModalitiesInStudy ``CT\\MR``) matches
  when any of its values matches (multiple-value matching, as for UID lists).
- Relational queries (§C.4.1.2.2, default): keys of levels below the query level restrict the
  result (``study.id IN (SELECT study_fk FROM series WHERE ...)``); hierarchical queries
  (§C.4.1.2.1) are checked by :meth:`Query.validate`.

Attributes that are not index columns are read from the stored DICOM JSON of the instance
(for IMAGE level, any attribute; for the higher levels, the whitelisted ones in
``_JSON_LEVEL`` from the level's first instance) and matched in Python after the SQL
filter. Rows are streamed: the cursor is iterated (psycopg's chunked stream on PostgreSQL,
an unbuffered cursor on MariaDB), never fetched whole.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    and_,
    distinct,
    func,
    literal,
    or_,
    select,
    text,
)

from pacsbox.archive.index.writer import INSTANCE, PATIENT, SERIES, STUDY, search_name

# -- levels and models (PS3.4 §C.6) ---------------------------------------------------------


class Level(enum.IntEnum):
    """Query/Retrieve levels, top to bottom."""

    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3

    @classmethod
    def parse(cls, text: str | None) -> Level:
        name = (text or "").strip().upper()
        if name not in cls.__members__:
            raise QueryError(f"Query/Retrieve Level {text!r} is not PATIENT/STUDY/SERIES/IMAGE")
        return cls[name]


class Model(enum.StrEnum):
    """Q/R information models (PS3.4 §C.6.1–C.6.3)."""

    PATIENT_ROOT = "PATIENT"
    STUDY_ROOT = "STUDY"
    PATIENT_STUDY_ONLY = "PATIENT_STUDY_ONLY"

    @property
    def levels(self) -> tuple[Level, ...]:
        if self is Model.STUDY_ROOT:
            return (Level.STUDY, Level.SERIES, Level.IMAGE)
        if self is Model.PATIENT_STUDY_ONLY:
            return (Level.PATIENT, Level.STUDY)
        return (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)


class MatchType(enum.StrEnum):
    """Matching types of PS3.4 §C.2.2.2."""

    UNIVERSAL = "universal"
    SINGLE = "single"
    WILDCARD = "wildcard"
    RANGE = "range"
    UID_LIST = "uid_list"
    VALUE_LIST = "value_list"
    SEQUENCE = "sequence"


class QueryError(ValueError):
    """The identifier cannot be processed; ``status`` is the DIMSE status to answer with."""

    def __init__(self, message: str, status: int = 0xA900, tag: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.tag = tag


# -- the attribute catalogue ----------------------------------------------------------------

_ANY = frozenset(MatchType)
_TEXT = frozenset(
    {
        MatchType.UNIVERSAL,
        MatchType.SINGLE,
        MatchType.WILDCARD,
        MatchType.VALUE_LIST,
    }
)
_DATE = frozenset({MatchType.UNIVERSAL, MatchType.SINGLE, MatchType.RANGE})
_UIDS = frozenset({MatchType.UNIVERSAL, MatchType.SINGLE, MatchType.UID_LIST})
_NUMBER = frozenset({MatchType.UNIVERSAL, MatchType.SINGLE, MatchType.VALUE_LIST})
_RETURN = frozenset({MatchType.UNIVERSAL})


@dataclass(frozen=True)
class Attribute:
    """An attribute the index can answer, at its level of the Patient Root model."""

    keyword: str
    level: Level
    column: Any = None  #: index column, or None when computed/constant
    matching: frozenset[MatchType] = _TEXT
    kind: str = "column"  #: column | int | list | counter | computed

    @property
    def tag(self) -> int:
        return int(tag_for_keyword(self.keyword))  # type: ignore[arg-type]

    @property
    def vr(self) -> str:
        return dictionary_VR(self.tag)

    def level_in(self, model: Model) -> Level:
        """Patient attributes are study-level attributes in the Study Root model."""
        if self.level is Level.PATIENT and model is not Model.PATIENT_ROOT:
            return Level.STUDY if model is Model.STUDY_ROOT else Level.PATIENT
        return self.level


P, ST, SE, IN = PATIENT.c, STUDY.c, SERIES.c, INSTANCE.c
_ATTRS = [
    # Patient level (PS3.4 §C.6.1.1.2; reference key tables)
    Attribute("PatientName", Level.PATIENT, P.patient_name),
    Attribute("PatientID", Level.PATIENT, P.patient_id),
    Attribute("IssuerOfPatientID", Level.PATIENT, P.issuer_of_patient_id),
    Attribute("PatientBirthDate", Level.PATIENT, P.patient_birth_date, _DATE),
    Attribute("PatientBirthTime", Level.PATIENT, P.patient_birth_time, _DATE),
    Attribute("PatientSex", Level.PATIENT, P.patient_sex),
    Attribute("NumberOfPatientRelatedStudies", Level.PATIENT, P.num_studies, _RETURN, "counter"),
    Attribute("NumberOfPatientRelatedSeries", Level.PATIENT, P.num_series, _RETURN, "counter"),
    Attribute(
        "NumberOfPatientRelatedInstances", Level.PATIENT, P.num_instances, _RETURN, "counter"
    ),
    # Study level (§C.6.1.1.3)
    Attribute("StudyInstanceUID", Level.STUDY, ST.study_instance_uid, _UIDS),
    Attribute("StudyDate", Level.STUDY, ST.study_date, _DATE),
    Attribute("StudyTime", Level.STUDY, ST.study_time, _DATE),
    Attribute("AccessionNumber", Level.STUDY, ST.accession_number),
    Attribute("StudyID", Level.STUDY, ST.study_id),
    Attribute("StudyDescription", Level.STUDY, ST.study_description),
    Attribute("ReferringPhysicianName", Level.STUDY, ST.referring_physician_name),
    Attribute("ModalitiesInStudy", Level.STUDY, ST.modalities_in_study, _TEXT, "list"),
    Attribute("SOPClassesInStudy", Level.STUDY, None, _UIDS, "computed"),
    Attribute("PatientAge", Level.STUDY, ST.patient_age),
    Attribute("PatientSize", Level.STUDY, ST.patient_size, _RETURN),
    Attribute("PatientWeight", Level.STUDY, ST.patient_weight, _RETURN),
    Attribute("InstitutionName", Level.STUDY, ST.institution_name),
    Attribute("NumberOfStudyRelatedSeries", Level.STUDY, ST.num_series, _RETURN, "counter"),
    Attribute("NumberOfStudyRelatedInstances", Level.STUDY, ST.num_instances, _RETURN, "counter"),
    # Series level (§C.6.1.1.4)
    Attribute("SeriesInstanceUID", Level.SERIES, SE.series_instance_uid, _UIDS),
    Attribute("Modality", Level.SERIES, SE.modality),
    Attribute("SeriesNumber", Level.SERIES, SE.series_number, _NUMBER, "int"),
    Attribute("SeriesDate", Level.SERIES, SE.series_date, _DATE),
    Attribute("SeriesTime", Level.SERIES, SE.series_time, _DATE),
    Attribute("SeriesDescription", Level.SERIES, SE.series_description),
    Attribute("BodyPartExamined", Level.SERIES, SE.body_part_examined),
    Attribute("StationName", Level.SERIES, SE.station_name),
    Attribute("ProtocolName", Level.SERIES, SE.protocol_name),
    Attribute(
        "PerformedProcedureStepStartDate",
        Level.SERIES,
        SE.performed_procedure_step_start_date,
        _DATE,
    ),
    Attribute(
        "PerformedProcedureStepStartTime",
        Level.SERIES,
        SE.performed_procedure_step_start_time,
        _DATE,
    ),
    Attribute("NumberOfSeriesRelatedInstances", Level.SERIES, SE.num_instances, _RETURN, "counter"),
    # Composite object instance level (§C.6.1.1.5)
    Attribute("SOPInstanceUID", Level.IMAGE, IN.sop_instance_uid, _UIDS),
    Attribute("SOPClassUID", Level.IMAGE, IN.sop_class_uid, _UIDS),
    Attribute("InstanceNumber", Level.IMAGE, IN.instance_number, _NUMBER, "int"),
    Attribute("InstanceCreationDate", Level.IMAGE, IN.instance_creation_date, _DATE),
    Attribute("InstanceCreationTime", Level.IMAGE, IN.instance_creation_time, _DATE),
    Attribute("ContentDate", Level.IMAGE, IN.content_date, _DATE),
    Attribute("ContentTime", Level.IMAGE, IN.content_time, _DATE),
    Attribute("Rows", Level.IMAGE, IN.rows, _NUMBER, "int"),
    Attribute("Columns", Level.IMAGE, IN.columns, _NUMBER, "int"),
    Attribute("SamplesPerPixel", Level.IMAGE, IN.samples_per_pixel, _NUMBER, "int"),
    Attribute("BitsAllocated", Level.IMAGE, IN.bits_allocated, _NUMBER, "int"),
    Attribute("BitsStored", Level.IMAGE, IN.bits_stored, _NUMBER, "int"),
    Attribute("PixelRepresentation", Level.IMAGE, IN.pixel_representation, _NUMBER, "int"),
    Attribute("PhotometricInterpretation", Level.IMAGE, IN.photometric_interpretation),
    Attribute("NumberOfFrames", Level.IMAGE, IN.number_of_frames, _NUMBER, "int"),
    Attribute("AvailableTransferSyntaxUID", Level.IMAGE, IN.transfer_syntax_uid, _UIDS),
]
#: keyword → Attribute, for every attribute with an index column or a computed value.
CATALOGUE: dict[str, Attribute] = {a.keyword: a for a in _ATTRS}
BY_TAG: dict[int, Attribute] = {a.tag: a for a in _ATTRS}

#: Attributes read from the stored DICOM JSON of the level's first instance (not columns).
#: At IMAGE level every attribute of the instance is available this way.
_JSON_LEVEL: dict[str, Level] = {
    "OtherPatientIDsSequence": Level.PATIENT,
    "IssuerOfPatientIDQualifiersSequence": Level.PATIENT,
    "PatientComments": Level.PATIENT,
    "EthnicGroup": Level.PATIENT,
    "ReferencedPatientSequence": Level.PATIENT,
    "ReferencedStudySequence": Level.STUDY,
    "ProcedureCodeSequence": Level.STUDY,
    "NameOfPhysiciansReadingStudy": Level.STUDY,
    "AdmittingDiagnosesDescription": Level.STUDY,
    "Occupation": Level.STUDY,
    "AdditionalPatientHistory": Level.STUDY,
    "RequestAttributesSequence": Level.SERIES,
    "ReferencedPerformedProcedureStepSequence": Level.SERIES,
    "PerformedProcedureStepID": Level.SERIES,
    "PerformedProcedureStepDescription": Level.SERIES,
    "PerformingPhysicianName": Level.SERIES,
    "OperatorsName": Level.SERIES,
    "Laterality": Level.SERIES,
    "Manufacturer": Level.SERIES,
    "ManufacturerModelName": Level.SERIES,
}
#: Study-level patient attributes answered at PATIENT level from the patient's latest study.
_PATIENT_FROM_STUDY = frozenset({"PatientAge", "PatientSize", "PatientWeight"})
#: Date/time pairs for combined date-time range matching (§C.2.2.2.5.1).
DATE_TIME_PAIRS = {
    "StudyDate": "StudyTime",
    "SeriesDate": "SeriesTime",
    "PatientBirthDate": "PatientBirthTime",
    "InstanceCreationDate": "InstanceCreationTime",
    "ContentDate": "ContentTime",
    "PerformedProcedureStepStartDate": "PerformedProcedureStepStartTime",
}
#: Unique keys per level (PS3.4 §C.6.1.1 / §C.6.2.1).
UNIQUE_KEYS = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}
#: Attributes the protocol layer fills in itself (not matched by the engine).
PROTOCOL_KEYS = frozenset(
    {
        "QueryRetrieveLevel",
        "SpecificCharacterSet",
        "RetrieveAETitle",
        "InstanceAvailability",
        "QueryRetrieveView",
        "RetrieveURL",
    }
)

_MAX_VALUE = 1024  # longer key values cannot match any index column (max 324 chars)
_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_DT = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$")
_UID = re.compile(r"^[0-9.]{1,64}$")


# -- the query object ---------------------------------------------------------------------


@dataclass(frozen=True)
class KeyMatch:
    """One key of a query: the attribute (keyword), its matching type and value.

    ``value`` by type: SINGLE/WILDCARD a str; RANGE a (low, high) pair of str ('' = open);
    UID_LIST/VALUE_LIST a tuple of str; SEQUENCE a tuple of KeyMatch (the item's keys);
    UNIVERSAL None.
    """

    keyword: str
    type: MatchType
    value: Any = None

    @property
    def tag(self) -> int:
        return int(tag_for_keyword(self.keyword) or 0)


@dataclass
class Query:
    """A query: level, keys with their matching, and the keys to return."""

    level: Level
    keys: list[KeyMatch] = field(default_factory=list)
    model: Model = Model.STUDY_ROOT
    relational: bool = True
    pn_case_insensitive: bool = True
    combined_datetime: bool = False
    #: keywords to return besides the keys (e.g. QIDO includefield); keys are always returned
    include: list[str] = field(default_factory=list)

    def key(self, keyword: str) -> KeyMatch | None:
        for k in self.keys:
            if k.keyword == keyword:
                return k
        return None

    def return_keywords(self) -> list[str]:
        """Keys returned: every key of the query, the include list, and the unique keys of
        the query level and the levels above it (so a result can be retrieved)."""
        out: list[str] = []
        for level in self.model.levels:
            if level <= self.level:
                out.append(UNIQUE_KEYS[level])
        for kw in [k.keyword for k in self.keys] + self.include:
            if kw not in out and kw not in PROTOCOL_KEYS:
                out.append(kw)
        return out

    def validate(self) -> None:
        """Check the query against its model (PS3.4 §C.4.1.2): level in the model, and for
        hierarchical queries the unique keys above the level and no keys below it."""
        if self.level not in self.model.levels:
            raise QueryError(
                f"level {self.level.name} does not exist in the {self.model.value} model"
            )
        if self.relational:
            return
        for k in self.keys:
            level = attribute_level(k.keyword, self.model)
            if level is None:
                continue
            if level > self.level:
                raise QueryError(
                    f"{k.keyword} is below the {self.level.name} level (hierarchical query)",
                    tag=k.tag,
                )
            if (
                level < self.level
                and k.type is not MatchType.UNIVERSAL
                and (k.keyword != UNIQUE_KEYS[level] or k.type is not MatchType.SINGLE)
            ):
                raise QueryError(
                    f"{k.keyword}: only the unique key with a single value is allowed above "
                    f"the {self.level.name} level (hierarchical query)",
                    tag=k.tag,
                )
        for level in self.model.levels:
            if level >= self.level:
                break
            unique = self.key(UNIQUE_KEYS[level])
            if unique is None or unique.type is not MatchType.SINGLE:
                raise QueryError(
                    f"{UNIQUE_KEYS[level]} (single value) is required for a hierarchical "
                    f"{self.level.name} level query",
                    tag=int(tag_for_keyword(UNIQUE_KEYS[level]) or 0),
                )


def attribute_level(keyword: str, model: Model) -> Level | None:
    """The level of an attribute in a model, or None when the index does not know it."""
    attr = CATALOGUE.get(keyword)
    if attr is not None:
        return attr.level_in(model)
    level = _JSON_LEVEL.get(keyword)
    if level is Level.PATIENT and model is Model.STUDY_ROOT:
        return Level.STUDY
    return level


# -- parsing key values into matches --------------------------------------------------------


def _check_len(keyword: str, text: str) -> None:
    if len(text) > _MAX_VALUE:
        raise QueryError(f"{keyword}: value longer than {_MAX_VALUE} characters")


def _check_date(keyword: str, vr: str, text: str) -> None:
    pattern = {"DA": _DA, "TM": _TM, "DT": _DT}[vr]
    if text and not pattern.match(text):
        raise QueryError(f"{keyword}: {text[:40]!r} is not a valid {vr} value")


def match_for(keyword: str, value: Any, vr: str | None = None) -> KeyMatch:
    """Classify a key value per PS3.4 §C.2.2.2 (by the attribute's VR).

    ``value``: None/'' (universal), a str (may contain ``\\`` for lists), a list of str, or
    for sequences a list of items, each a list of KeyMatch (or a dict keyword → value).
    Raises QueryError for values that cannot be a valid key (bad dates, huge values).
    """
    tag = tag_for_keyword(keyword)
    if vr is None:
        vr = dictionary_VR(tag) if tag is not None else "LO"
    if vr == "SQ":
        items = list(value or [])
        if len(items) > 1:
            raise QueryError(f"{keyword}: a sequence key holds at most one item", tag=tag)
        if not items:
            return KeyMatch(keyword, MatchType.UNIVERSAL)
        item = items[0]
        subkeys = (
            [match_for(kw, v) for kw, v in item.items()] if isinstance(item, dict) else list(item)
        )
        if all(k.type is MatchType.UNIVERSAL for k in subkeys):
            return KeyMatch(keyword, MatchType.UNIVERSAL, tuple(subkeys) or None)
        return KeyMatch(keyword, MatchType.SEQUENCE, tuple(subkeys))
    if value is None:
        return KeyMatch(keyword, MatchType.UNIVERSAL)
    if isinstance(value, list | tuple):
        parts = [str(v) for v in value]
    else:
        text = str(value)
        _check_len(keyword, text)
        parts = text.split("\\")
    parts = [p.strip() for p in parts]
    for p in parts:
        _check_len(keyword, p)
    if all(not p for p in parts) or parts == ["*"]:
        return KeyMatch(keyword, MatchType.UNIVERSAL)
    if vr == "UI":
        bad = [p for p in parts if not _UID.match(p)]
        if bad:
            raise QueryError(f"{keyword}: {bad[0][:70]!r} is not a UID", tag=tag)
        if len(parts) == 1:
            return KeyMatch(keyword, MatchType.SINGLE, parts[0])
        return KeyMatch(keyword, MatchType.UID_LIST, tuple(parts))
    if vr in ("DA", "TM", "DT"):
        if len(parts) > 1:
            raise QueryError(f"{keyword}: multiple values are not allowed for {vr}", tag=tag)
        text = parts[0]
        if "-" in text and not (vr == "DT" and re.search(r"\d[+-]\d{4}$", text)):
            low, _, high = text.partition("-")
            _check_date(keyword, vr, low)
            _check_date(keyword, vr, high)
            if not low and not high:
                return KeyMatch(keyword, MatchType.UNIVERSAL)
            return KeyMatch(keyword, MatchType.RANGE, (low, high))
        _check_date(keyword, vr, text)
        return KeyMatch(keyword, MatchType.SINGLE, text)
    if vr in ("IS", "SL", "SS", "UL", "US", "DS", "FL", "FD"):
        try:
            nums = [str(int(float(p))) if vr != "DS" else p for p in parts if p]
        except ValueError as exc:
            raise QueryError(f"{keyword}: {parts[0][:40]!r} is not a number", tag=tag) from exc
        if len(nums) == 1:
            return KeyMatch(keyword, MatchType.SINGLE, nums[0])
        return KeyMatch(keyword, MatchType.VALUE_LIST, tuple(nums))
    if len(parts) > 1:
        return KeyMatch(keyword, MatchType.VALUE_LIST, tuple(p for p in parts if p))
    text = parts[0]
    if "*" in text or "?" in text:
        return KeyMatch(keyword, MatchType.WILDCARD, text)
    return KeyMatch(keyword, MatchType.SINGLE, text)


# -- SQL building ---------------------------------------------------------------------------

_TABLE_OF_LEVEL = {Level.PATIENT: PATIENT, Level.STUDY: STUDY, Level.SERIES: SERIES}


def _like_pattern(pattern: str) -> str:
    """DICOM wildcard → SQL LIKE pattern with escape character ``!``."""
    out = []
    for ch in pattern:
        if ch in "!%_":
            out.append("!" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def _glob_pattern(pattern: str) -> str:
    """DICOM wildcard → SQLite GLOB pattern (case-sensitive, index-friendly for prefixes)."""
    return pattern.replace("[", "[[]")


class _Compiler:
    """Turns KeyMatch objects into SQL conditions for one dialect."""

    def __init__(self, dialect: str, query: Query) -> None:
        self.dialect = dialect
        self.query = query

    def wildcard(self, col: Any, pattern: str) -> ColumnElement[bool]:
        if self.dialect == "sqlite":
            return col.op("GLOB")(_glob_pattern(pattern))
        return col.like(_like_pattern(pattern), escape="!")

    def text(self, attr: Attribute, m: KeyMatch) -> ColumnElement[bool]:
        col = attr.column
        fold = self.query.pn_case_insensitive and attr.vr == "PN"
        if fold and attr.keyword == "PatientName":
            col = PATIENT.c.patient_name_search
        elif fold:
            col = func.upper(col)

        def norm(v: str) -> str:
            return (
                search_name(v)
                if attr.keyword == "PatientName" and fold
                else (v.upper() if fold else v)
            )

        def one(v: str) -> ColumnElement[bool]:
            if "*" in v or "?" in v:
                return self.wildcard(col, norm(v))
            return col == norm(v)

        if m.type is MatchType.VALUE_LIST:
            return or_(*(one(v) for v in m.value))
        return one(m.value)

    def number(self, attr: Attribute, m: KeyMatch) -> ColumnElement[bool]:
        values = m.value if m.type is MatchType.VALUE_LIST else (m.value,)
        if attr.kind == "int":
            return attr.column.in_([int(v) for v in values])
        return attr.column.in_(list(values))

    def range_(self, col: Any, vr: str, low: str, high: str) -> ColumnElement[bool]:
        conds: list[ColumnElement[bool]] = [col != ""]
        if low:
            conds.append(col >= low)
        if high:
            if vr == "DA":
                conds.append(col <= high)
            else:  # TM/DT: the upper bound covers its whole precision (10:00 → 10:00:59.99)
                conds.append(col < _next_prefix(high))
        return and_(*conds)

    def condition(self, m: KeyMatch) -> ColumnElement[bool] | None:
        attr = CATALOGUE[m.keyword]
        if m.type is MatchType.UNIVERSAL or m.type not in attr.matching:
            return None
        if attr.keyword == "ModalitiesInStudy":
            return self.modalities(m)
        if attr.keyword == "SOPClassesInStudy":
            values = m.value if m.type is MatchType.UID_LIST else (m.value,)
            sub = (
                select(SERIES.c.study_fk)
                .join(INSTANCE, INSTANCE.c.series_fk == SERIES.c.id)
                .where(INSTANCE.c.sop_class_uid.in_(list(values)))
            )
            return _Semi(STUDY.c.id, sub)  # type: ignore[return-value]
        if m.type is MatchType.RANGE:
            return self.range_(attr.column, attr.vr, *m.value)
        if m.type in (MatchType.UID_LIST,):
            return attr.column.in_(list(m.value))
        if attr.kind == "int":
            return self.number(attr, m)
        if attr.vr in ("DA", "TM", "DT") or attr.vr == "UI":
            return attr.column == m.value
        return self.text(attr, m)

    def modalities(self, m: KeyMatch) -> ColumnElement[bool]:
        """ModalitiesInStudy matches when one series of the study has a matching modality,
        looked up on the series (modality, study_fk) index — never a scan of the
        multi-valued column."""
        fake = Attribute("Modality", Level.SERIES, SERIES.c.modality)
        sub = select(SERIES.c.study_fk).where(self.text(fake, m))
        return _Semi(STUDY.c.id, sub)  # type: ignore[return-value]

    def combined(self, date: KeyMatch, time: KeyMatch) -> ColumnElement[bool]:
        """Combined date-time range (§C.2.2.2.5.1): (date, time) compared as one value."""
        dcol, tcol = CATALOGUE[date.keyword].column, CATALOGUE[time.keyword].column
        d1, d2 = date.value
        t1, t2 = time.value
        conds: list[ColumnElement[bool]] = [dcol != ""]
        if d1:
            conds.append(or_(dcol > d1, and_(dcol == d1, tcol >= t1)) if t1 else dcol >= d1)
        if d2:
            conds.append(
                or_(dcol < d2, and_(dcol == d2, tcol < _next_prefix(t2))) if t2 else dcol <= d2
            )
        return and_(*conds)


@dataclass(frozen=True)
class _Semi:
    """ "``outer`` has a row in ``sub``" (``sub`` selects the foreign key to ``outer``).

    Rendered as ``outer IN (sub)`` when it should drive the query (no other condition: the
    database walks the lower level's index and fetches the parents), or as a correlated
    ``EXISTS`` probe when other, indexed conditions of the outer level select fewer rows —
    SQLite's planner would otherwise drive from the IN list whatever its size."""

    outer: Any
    sub: Select

    def as_in(self) -> ColumnElement[bool]:
        return self.outer.in_(self.sub)

    def as_exists(self) -> ColumnElement[bool]:
        fk = self.sub.selected_columns[0]
        return self.sub.where(fk == self.outer).exists()


def _conds(items: list[Any]) -> list[ColumnElement[bool]]:
    """Conditions for use inside a subquery (semi-joins as IN)."""
    return [c.as_in() if isinstance(c, _Semi) else c for c in items]


def _next_prefix(text: str) -> str:
    """The smallest string greater than every string starting with ``text``."""
    return text[:-1] + chr(ord(text[-1]) + 1) if text else text


# -- running --------------------------------------------------------------------------------


@dataclass
class Row:
    """One result: keyword → value (str, int, list of str, or for JSON-sourced attributes
    the DICOM JSON element dict, PS3.18 §F.2)."""

    values: dict[str, Any]

    def get(self, keyword: str, default: Any = None) -> Any:
        return self.values.get(keyword, default)


def _json_element_strings(elem: dict[str, Any] | None) -> list[str]:
    if not elem:
        return []
    out = []
    for v in elem.get("Value", []) or []:
        if isinstance(v, dict):
            out.append(str(v.get("Alphabetic", "")))
        else:
            out.append(str(v))
    return out


def _py_match(m: KeyMatch, elem: dict[str, Any] | None, fold_pn: bool) -> bool:
    """Matching of one key against a DICOM JSON element (attributes not in index columns)."""
    if m.type is MatchType.UNIVERSAL:
        return True
    if m.type is MatchType.SEQUENCE:
        for item in (elem or {}).get("Value", []) or []:
            if all(
                _py_match(k, item.get(f"{k.tag:08X}") if isinstance(item, dict) else None, fold_pn)
                for k in m.value
            ):
                return True
        return False
    values = _json_element_strings(elem)
    if not values:
        return False
    fold = fold_pn and (elem or {}).get("vr") == "PN"

    def one(pattern: str, value: str) -> bool:
        if fold:
            pattern, value = pattern.upper(), value.upper()
        if "*" in pattern or "?" in pattern:
            rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
            return re.fullmatch(rx, value, re.S) is not None
        return pattern == value

    if m.type is MatchType.RANGE:
        low, high = m.value
        return any(
            v and (not low or v >= low) and (not high or v <= high or v.startswith(high))
            for v in values
        )
    patterns = m.value if isinstance(m.value, tuple) else (m.value,)
    return any(one(p, v) for p in patterns for v in values)


def _filter_json(elem: dict[str, Any] | None, sub: tuple[KeyMatch, ...] | None) -> Any:
    """Sequence return: keep only the requested item keys (all when the item was empty)."""
    if not elem or not sub or elem.get("vr") != "SQ":
        return elem
    wanted = {f"{k.tag:08X}" for k in sub}
    items = [
        {t: v for t, v in item.items() if t in wanted}
        for item in elem.get("Value", []) or []
        if isinstance(item, dict)
    ]
    return {"vr": "SQ", "Value": items}


class QueryEngine:
    """Runs queries on one index database (see module docstring)."""

    def __init__(self, engine: Engine, *, batch: int = 200) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.batch = batch

    # -- statement ------------------------------------------------------------------------
    def statement(self, query: Query) -> tuple[Select, list[str], list[KeyMatch]]:
        """(SELECT, column labels, keys matched in Python) for a validated query."""
        frm, plain, semis, python_keys = self._conditions(query)
        level = query.level
        where = plain + [c.as_exists() if plain or i else c.as_in() for i, c in enumerate(semis)]

        labels: list[str] = []
        cols: list[Any] = []
        wanted = query.return_keywords()
        json_wanted = []
        for kw in wanted:
            attr = CATALOGUE.get(kw)
            if attr is None:
                jlevel = _JSON_LEVEL.get(kw)
                if level == Level.IMAGE or (jlevel is not None and jlevel <= level):
                    json_wanted.append(kw)
                continue
            if attr.level > level and not (
                level is Level.PATIENT and attr.keyword in _PATIENT_FROM_STUDY
            ):
                continue  # a lower-level attribute has no single value here: returned empty
            col = self._return_column(attr, level)
            if col is None:
                continue
            labels.append(kw)
            cols.append(col.label(f"c{len(cols)}"))
        if json_wanted or python_keys:
            labels.append("__json__")
            cols.append(self._json_column(level).label(f"c{len(cols)}"))
        stmt = select(*cols).select_from(frm)
        if where:
            stmt = stmt.where(and_(*where))
        return stmt, labels, python_keys

    def _conditions(self, query: Query) -> tuple[Any, list[Any], list[_Semi], list[KeyMatch]]:
        """(FROM, plain conditions, semi-joins, keys matched in Python) of a validated
        query."""
        query.validate()
        comp = _Compiler(self.dialect, query)
        level = query.level
        base = {
            Level.PATIENT: PATIENT,
            Level.STUDY: STUDY,
            Level.SERIES: SERIES,
            Level.IMAGE: INSTANCE,
        }[level]
        frm: Any = base
        if level >= Level.SERIES:
            frm = (
                frm.join(SERIES, INSTANCE.c.series_fk == SERIES.c.id)
                if level == Level.IMAGE
                else frm
            )
            frm = frm.join(STUDY, SERIES.c.study_fk == STUDY.c.id)
        if level >= Level.STUDY:
            frm = frm.join(PATIENT, STUDY.c.patient_fk == PATIENT.c.id)

        where: list[Any] = []
        below: dict[Level, list[Any]] = {}
        python_keys: list[KeyMatch] = []
        keys = list(query.keys)
        if query.combined_datetime:
            for dkw, tkw in DATE_TIME_PAIRS.items():
                d, t = query.key(dkw), query.key(tkw)
                if d and t and d.type is MatchType.RANGE and t.type is MatchType.RANGE:
                    cond = comp.combined(d, t)
                    lvl = CATALOGUE[dkw].level
                    (where if lvl <= level else below.setdefault(lvl, [])).append(cond)
                    keys = [k for k in keys if k not in (d, t)]
        for k in keys:
            attr = CATALOGUE.get(k.keyword)
            if attr is None:
                jlevel = _JSON_LEVEL.get(k.keyword)
                if k.type is not MatchType.UNIVERSAL and (
                    level == Level.IMAGE or (jlevel is not None and jlevel <= level)
                ):
                    python_keys.append(k)
                continue
            if (
                attr.level > level
                and level in (Level.PATIENT, Level.STUDY)
                and (query.model is Model.PATIENT_STUDY_ONLY and attr.level > Level.STUDY)
            ):
                continue  # no series/image level in this model: returned empty, not matched
            cond = comp.condition(k)
            if cond is None:
                continue
            # ModalitiesInStudy/SOPClassesInStudy are study-level conditions on STUDY.id
            if attr.level <= level:
                where.append(cond)
            elif not query.relational:
                continue  # validate() refused these already
            else:
                below.setdefault(attr.level, []).append(cond)
        if below:
            where.append(self._relational(level, below))
        plain = [c for c in where if not isinstance(c, _Semi)]
        semis = [c for c in where if isinstance(c, _Semi)]
        return frm, plain, semis, python_keys

    def _return_column(self, attr: Attribute, level: Level) -> Any:
        if attr.keyword == "SOPClassesInStudy":
            agg = (
                func.string_agg(INSTANCE.c.sop_class_uid.distinct(), literal(","))
                if self.dialect == "postgresql"
                else func.group_concat(INSTANCE.c.sop_class_uid.distinct())
            )
            s2 = SERIES.alias("se_sc")
            return (
                select(agg)
                .select_from(INSTANCE.join(s2, INSTANCE.c.series_fk == s2.c.id))
                .where(s2.c.study_fk == STUDY.c.id)
                .scalar_subquery()
            )
        if attr.level is Level.STUDY and level is Level.PATIENT:
            # Patient's Age/Size/Weight at patient level: from the patient's latest study.
            s2 = STUDY.alias("st_latest")
            return (
                select(s2.c[attr.column.name])
                .where(s2.c.patient_fk == PATIENT.c.id)
                .order_by(s2.c.study_date.desc(), s2.c.id.desc())
                .limit(1)
                .scalar_subquery()
            )
        return attr.column

    def _json_column(self, level: Level) -> Any:
        """The stored DICOM JSON of the row's instance, or of the level's first instance."""
        if level == Level.IMAGE:
            return INSTANCE.c.attributes
        i2, s2, t2 = INSTANCE.alias("i_rep"), SERIES.alias("se_rep"), STUDY.alias("st_rep")
        if level == Level.SERIES:
            sub = select(i2.c.attributes).where(i2.c.series_fk == SERIES.c.id)
            return sub.order_by(i2.c.id).limit(1).scalar_subquery()
        sub = select(i2.c.attributes).select_from(i2.join(s2, i2.c.series_fk == s2.c.id))
        if level == Level.STUDY:
            sub = sub.where(s2.c.study_fk == STUDY.c.id)
        else:
            sub = sub.join(t2, s2.c.study_fk == t2.c.id).where(t2.c.patient_fk == PATIENT.c.id)
        return sub.order_by(i2.c.id).limit(1).scalar_subquery()

    def _relational(self, level: Level, below: dict[Level, list[Any]]) -> _Semi:
        """Keys of lower levels restrict the result (§C.4.1.2.2): the entity must have a
        descendant matching all of them (a semi-join, see _Semi)."""
        deepest = max(below)
        conds = _conds([c for lvl in below for c in below[lvl]])
        if level == Level.PATIENT:
            frm: Any = STUDY
            if deepest >= Level.SERIES:
                frm = frm.join(SERIES, SERIES.c.study_fk == STUDY.c.id)
            if deepest >= Level.IMAGE:
                frm = frm.join(INSTANCE, INSTANCE.c.series_fk == SERIES.c.id)
            sub = select(STUDY.c.patient_fk).select_from(frm).where(and_(*conds))
            return _Semi(PATIENT.c.id, sub)
        if level == Level.STUDY:
            frm = SERIES
            if deepest >= Level.IMAGE:
                frm = frm.join(INSTANCE, INSTANCE.c.series_fk == SERIES.c.id)
            return _Semi(STUDY.c.id, select(SERIES.c.study_fk).select_from(frm).where(and_(*conds)))
        # level SERIES, keys of the IMAGE level
        return _Semi(SERIES.c.id, select(INSTANCE.c.series_fk).where(and_(*conds)))

    # -- execution ------------------------------------------------------------------------
    def run(self, query: Query) -> Iterator[Row]:
        """Yield matching rows one by one from the open cursor (bounded memory).

        Closing the generator (e.g. on C-CANCEL) closes the cursor and the connection.
        """
        stmt, labels, python_keys = self.statement(query)
        json_wanted = [
            kw for kw in query.return_keywords() if kw not in CATALOGUE and kw not in PROTOCOL_KEYS
        ]
        seq_subkeys = {
            k.keyword: k.value
            for k in query.keys
            if isinstance(k.value, tuple) and k.value and isinstance(k.value[0], KeyMatch)
        }
        fold = query.pn_case_insensitive
        with self.engine.connect() as conn:
            rows_in, close = self._stream(conn, stmt)
            try:
                # Per-column conversion decided once, not per row.
                has_json = "__json__" in labels
                plain = [
                    (i, label)
                    for i, label in enumerate(labels)
                    if label != "__json__"
                    and CATALOGUE[label].kind != "list"
                    and label != "SOPClassesInStudy"
                ]
                lists = [
                    (i, label, "," if label == "SOPClassesInStudy" else "\\")
                    for i, label in enumerate(labels)
                    if label != "__json__"
                    and (CATALOGUE[label].kind == "list" or label == "SOPClassesInStudy")
                ]
                json_index = labels.index("__json__") if has_json else -1
                json_tags = [(kw, f"{int(tag_for_keyword(kw) or 0):08X}") for kw in json_wanted]
                for raw in rows_in:
                    values: dict[str, Any] = {}
                    for i, label in plain:
                        value = raw[i]
                        values[label] = "" if value is None else value
                    for i, label, sep in lists:
                        values[label] = [v for v in (raw[i] or "").split(sep) if v]
                    if has_json:
                        model = _load_json(raw[json_index]) or {}
                        if python_keys and not all(
                            _py_match(k, model.get(f"{k.tag:08X}"), fold) for k in python_keys
                        ):
                            continue
                        for kw, key in json_tags:
                            values[kw] = _filter_json(model.get(key), seq_subkeys.get(kw))
                    yield Row(values)
            finally:
                close()

    def _stream(self, conn: Any, stmt: Select) -> tuple[Iterator[Any], Any]:
        """(row iterator, close function) that never holds the whole result in memory.

        psycopg 3 (PostgreSQL): ``cursor.stream()`` — rows arrive in libpq single-row/chunked
        mode on the one round trip of the query (a server-side cursor costs 4 more round
        trips, ~4 ms per query); closing it early cancels the query. Elsewhere SQLAlchemy's
        ``yield_per``: an unbuffered cursor on MariaDB, and SQLite steps the statement as
        batches are fetched.
        """
        if self.dialect == "postgresql" and self.engine.dialect.driver == "psycopg":
            compiled = stmt.compile(
                dialect=self.engine.dialect, compile_kwargs={"render_postcompile": True}
            )
            cursor = conn.connection.dbapi_connection.cursor()
            # chunks need libpq 17 (psycopg-binary bundles it); single rows before that
            size = self.batch if _libpq_version() >= 170000 else 1
            gen = cursor.stream(str(compiled), compiled.params, size=size)

            def close_pg() -> None:
                gen.close()
                cursor.close()

            return gen, close_pg
        result = conn.execution_options(yield_per=self.batch).execute(stmt)
        return (r for batch in result.partitions() for r in batch), result.close

    def count(self, query: Query) -> int:
        """How many rows :meth:`run` would yield (QIDO-RS ``X-Total-Count``).

        One ``SELECT count(*)`` over the query's FROM/WHERE when every key is matched in SQL;
        keys matched in Python (stored-JSON attributes) need the rows, so then the matches
        are counted while streaming them (bounded memory, slower).
        """
        bare = Query(
            level=query.level,
            keys=list(query.keys),
            model=query.model,
            relational=query.relational,
            pn_case_insensitive=query.pn_case_insensitive,
            combined_datetime=query.combined_datetime,
        )
        _frm, plain, semis, python_keys = self._conditions(bare)
        if python_keys:
            rows = self.run(bare)
            try:
                return sum(1 for _ in rows)
            finally:
                rows.close()  # type: ignore[attr-defined]
        if not plain and len(semis) == 1:
            # The only condition is "has a descendant matching …" (e.g. ModalitiesInStudy=MR):
            # the answer is the number of distinct parent keys in the lower level's index
            # (every parent row exists: the foreign keys are NOT NULL and ingest/deletion keep
            # the hierarchy whole) — no walk over the parents and their joins.
            sub = semis[0].sub.subquery()
            counted = select(func.count(distinct(sub.c[0])))
        else:
            stmt, _labels, _python = self.statement(bare)
            counted = select(func.count()).select_from(
                stmt.with_only_columns(literal(1)).subquery()
            )
        with self.engine.connect() as conn:
            return int(conn.execute(counted).scalar_one())

    def explain(self, query: Query) -> str:
        """The database's plan for a query (for benchmarks and checks)."""
        stmt, _, _ = self.statement(query)
        sql = str(stmt.compile(self.engine, compile_kwargs={"literal_binds": True}))
        prefix = {"sqlite": "EXPLAIN QUERY PLAN ", "postgresql": "EXPLAIN "}.get(
            self.dialect, "EXPLAIN "
        )
        with self.engine.connect() as conn:
            rows = conn.execute(text(prefix + sql)).fetchall()
        return "\n".join(" | ".join(str(c) for c in row) for row in rows)


def _libpq_version() -> int:
    try:
        import psycopg

        return int(psycopg.pq.version())
    except Exception:
        return 0


def _load_json(value: Any) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        model = json.loads(value)
    except (TypeError, ValueError):
        return None
    return model if isinstance(model, dict) else None


def run(engine: Engine, query: Query) -> Iterator[Row]:
    """Shortcut: ``QueryEngine(engine).run(query)``."""
    return QueryEngine(engine).run(query)


__all__ = [
    "BY_TAG",
    "CATALOGUE",
    "Attribute",
    "KeyMatch",
    "Level",
    "MatchType",
    "Model",
    "Query",
    "QueryEngine",
    "QueryError",
    "Row",
    "match_for",
    "run",
    "search_name",
]
