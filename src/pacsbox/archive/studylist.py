"""The web study list (SPEC E4): URL search parameters → one SQL statement over the index.

HIS/RIS systems link into the list with URL parameters, ``key<op>value``, for example
``patientid=123&modality=ct&modality=mr&studydate=pastweek``. :func:`parse` turns the
parameters into typed :class:`Condition` objects (raising :class:`StudyListError` with a
message a person can act on), and :class:`StudyList` builds ONE SQLAlchemy statement for a
page of studies (``study ⨝ patient``; series and instance keys as ``EXISTS`` semi-joins)
and one for the total count. Every value is a bound parameter.

Keys (case-insensitive): the reference list of the SPEC (``studyinstanceuid``,
``seriesinstanceuid``, ``sopinstanceuid``, ``patientid``, ``patientname``,
``patientcomments``, ``patientbirthdate``, ``patientsex``, ``studydescription``, ``studyid``,
``studydate``, ``studytime``, ``accessionnumber``, ``seriesnumber``, ``seriesdate``,
``seriestime``, ``seriesdescription``, ``modality``, ``bodypartexamined``) plus ``sourceae``,
``institutionname``, ``referringphysicianname`` and ``receiveddate``.

Operators, as they appear in the URL (the query-string value starts with the operator's tail):

========================  ==============================================================
``key=v``, ``key==v``     equal; ``*`` and ``?`` are wildcards (PS3.4 §C.2.2.2.3)
``key=!=v``               not equal (wildcards allowed)
``key=>>v`` / ``key=>=v``  greater / greater or equal
``key=<<v`` / ``key=<=v``  less / less or equal
``key=**v``               contains
``key=~a~b``              range, inclusive (``==~a~b`` too; ``~a~`` and ``~~b`` are open)
========================  ==============================================================

Repeated keys are OR-ed, different keys AND-ed. Dates are ``2018/01/23``, ``2018-01-23`` or
``20180123``; date keys also take ``today``, ``yesterday``, ``pastweek`` (today and the 7
days before) and ``pastmonth`` (from the same day of the previous month to today). Times are
``10:56:20``, ``10:56`` or ``105620``; a time matches at its precision (``=10:56`` is any
second of that minute). Ordering comparisons never match an empty value.

Matching rules: Patient's Name and Referring Physician's Name follow ``pn_case_insensitive``
(Patient's Name through the normalised ``patient.patient_name_search`` column and the query
engine's :func:`~pacsbox.archive.query.search_name`); code strings (modality, sex, body part)
are compared upper-cased; descriptions, institution and patient comments case-insensitively
(ASCII folding on SQLite); identifiers and UIDs exactly. Series/instance keys restrict the
study list relationally (PS3.4 §C.4.1.2.2): positive conditions of different lower-level keys
must hold for the same series (``modality=CT&bodypartexamined=HEAD``: a CT series of the
head); ``=!=`` on a lower-level key means "no series/instance of the study has that value".
"""

from __future__ import annotations

import calendar
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    and_,
    cast,
    distinct,
    func,
    not_,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB

from pacsbox.archive.index.writer import INSTANCE, PATIENT, SERIES, STUDY, search_name
from pacsbox.archive.query import _glob_pattern, _like_pattern, _next_prefix

#: Parameters that are not search keys.
RESERVED = frozenset({"sort", "limit", "offset"})
MAX_VALUES_PER_KEY = 100
MAX_CONDITIONS = 300
MAX_VALUE_LENGTH = 1024
MAX_SORT_KEYS = 5
#: Up to this many matches a page is read by finding the matches first, then sorting them.
DRIVE_FROM_MATCHES = 5000


class StudyListError(ValueError):
    """A search parameter cannot be understood; the message says which and why."""


class Op(enum.StrEnum):
    EQ = "="
    NE = "=!="
    GT = "=>>"
    GE = "=>="
    LT = "=<<"
    LE = "=<="
    CONTAINS = "=**"
    RANGE = "=~a~b"


class Kind(enum.StrEnum):
    """How a key's values are read and compared."""

    ID = "id"  #: identifiers, UIDs, AE titles: exact, case-sensitive
    CS = "cs"  #: code strings (modality, sex, body part): the value is upper-cased
    TEXT = "text"  #: descriptions, institution: case-insensitive
    PN = "pn"  #: person names: per pn_case_insensitive
    DATE = "date"
    TIME = "time"
    INT = "int"
    DATETIME = "datetime"  #: a timestamp column searched by date (receiveddate)


@dataclass(frozen=True)
class Key:
    """A search key: where it lives (patient/study/series/instance/json) and its kind."""

    name: str
    level: str
    column: Any
    kind: Kind
    #: DICOM JSON tag for keys read from the stored attributes (level "json")
    tag: str = ""


P, ST, SE, IN = PATIENT.c, STUDY.c, SERIES.c, INSTANCE.c
KEYS: dict[str, Key] = {
    k.name: k
    for k in (
        Key("studyinstanceuid", "study", ST.study_instance_uid, Kind.ID),
        Key("seriesinstanceuid", "series", SE.series_instance_uid, Kind.ID),
        Key("sopinstanceuid", "instance", IN.sop_instance_uid, Kind.ID),
        Key("patientid", "patient", P.patient_id, Kind.ID),
        Key("patientname", "patient", P.patient_name, Kind.PN),
        Key("patientcomments", "json", IN.attributes, Kind.TEXT, tag="00104000"),
        Key("patientbirthdate", "patient", P.patient_birth_date, Kind.DATE),
        Key("patientsex", "patient", P.patient_sex, Kind.CS),
        Key("studydescription", "study", ST.study_description, Kind.TEXT),
        Key("studyid", "study", ST.study_id, Kind.ID),
        Key("studydate", "study", ST.study_date, Kind.DATE),
        Key("studytime", "study", ST.study_time, Kind.TIME),
        Key("accessionnumber", "study", ST.accession_number, Kind.ID),
        Key("seriesnumber", "series", SE.series_number, Kind.INT),
        Key("seriesdate", "series", SE.series_date, Kind.DATE),
        Key("seriestime", "series", SE.series_time, Kind.TIME),
        Key("seriesdescription", "series", SE.series_description, Kind.TEXT),
        Key("modality", "series", SE.modality, Kind.CS),
        Key("bodypartexamined", "series", SE.body_part_examined, Kind.CS),
        # extras an administrator expects
        Key("sourceae", "study", ST.source_ae, Kind.ID),
        Key("institutionname", "study", ST.institution_name, Kind.TEXT),
        Key("referringphysicianname", "study", ST.referring_physician_name, Kind.PN),
        Key("receiveddate", "study", ST.received_at, Kind.DATETIME),
    )
}
_LIKE_OPS = frozenset({Op.EQ, Op.NE, Op.CONTAINS})
_RANGE_KINDS = frozenset({Kind.DATE, Kind.TIME, Kind.INT, Kind.DATETIME})
_TEXT_KINDS = frozenset({Kind.ID, Kind.CS, Kind.TEXT, Kind.PN})

#: Sortable columns: name (as in the JSON items, underscores optional) → column(s).
SORTS: dict[str, tuple[Any, ...]] = {
    "studydate": (ST.study_date, ST.study_time),
    "studytime": (ST.study_time,),
    "patientname": (P.patient_name_search,),  # upper-cased: case-insensitive order
    "patientid": (P.patient_id,),
    "patientbirthdate": (P.patient_birth_date,),
    "patientsex": (P.patient_sex,),
    "modalitiesinstudy": (ST.modalities_in_study,),
    "modality": (ST.modalities_in_study,),
    "studydescription": (ST.study_description,),
    "accessionnumber": (ST.accession_number,),
    "studyid": (ST.study_id,),
    "numseries": (ST.num_series,),
    "numinstances": (ST.num_instances,),
    "sourceae": (ST.source_ae,),
    "receivedat": (ST.received_at,),
    "receiveddate": (ST.received_at,),
    "institutionname": (ST.institution_name,),
    "referringphysicianname": (ST.referring_physician_name,),
    "studyinstanceuid": (ST.study_instance_uid,),
}
DEFAULT_SORT: tuple[tuple[str, bool], ...] = (("studydate", True),)

#: The columns of one item of the list, in answer order.
ITEM_COLUMNS = (
    ST.study_instance_uid,
    P.patient_name,
    P.patient_id,
    P.patient_birth_date,
    P.patient_sex,
    ST.study_date,
    ST.study_time,
    ST.modalities_in_study,
    ST.study_description,
    ST.accession_number,
    ST.study_id,
    ST.num_series,
    ST.num_instances,
    ST.source_ae,
    ST.received_at,
    ST.institution_name,
    ST.referring_physician_name,
)


@dataclass(frozen=True)
class Condition:
    """One parsed parameter. ``value`` by operator: a str (or int for INT keys, a date for
    DATETIME keys); RANGE a (low, high) pair with None for an open end."""

    key: str
    op: Op
    value: Any

    @property
    def negative(self) -> bool:
        return self.op is Op.NE


@dataclass
class StudyListQuery:
    """Parsed search: conditions per key (OR within a key, AND across keys) and the sort."""

    conditions: dict[str, list[Condition]] = field(default_factory=dict)
    #: (sort name, descending) pairs
    sort: tuple[tuple[str, bool], ...] = DEFAULT_SORT


# -- parsing --------------------------------------------------------------------------------

_DATE_RE = re.compile(r"^(\d{4})[/-]?(\d{2})[/-]?(\d{2})$")
_TIME_RE = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?)?$")
_INT_RE = re.compile(r"^[+-]?\d{1,10}$")
_SPECIAL_DATES = ("today", "yesterday", "pastweek", "pastmonth")


def _split_operator(raw: str) -> tuple[Op, str]:
    """The operator and the operand of a query-string value (the text after ``key=``)."""
    if raw.startswith(("~", "=~")):
        return Op.RANGE, raw.removeprefix("=")
    for prefix, op in (
        ("!=", Op.NE),
        (">>", Op.GT),
        (">=", Op.GE),
        ("<<", Op.LT),
        ("<=", Op.LE),
        ("**", Op.CONTAINS),
    ):
        if raw.startswith(prefix):
            return op, raw[len(prefix) :]
    if raw.startswith("=="):
        return Op.EQ, raw[2:]  # key===v
    if raw.startswith("="):
        return Op.EQ, raw[1:]  # key==v
    if raw[:1] in ("!", ">", "<"):
        raise StudyListError(
            f"unknown operator in {raw[:20]!r}: use =, ==, =!=, =>>, =>=, =<<, =<=, =** or =~a~b"
        )
    return Op.EQ, raw


def _parse_date(key: str, text: str) -> str:
    m = _DATE_RE.match(text.strip())
    if m:
        try:
            return date(int(m[1]), int(m[2]), int(m[3])).strftime("%Y%m%d")
        except ValueError:
            pass
    raise StudyListError(
        f"{key}: {text[:40]!r} is not a date (use 2018/01/23, 2018-01-23 or 20180123)"
    )


def _parse_time(key: str, text: str) -> str:
    m = _TIME_RE.match(text.strip())
    if m:
        hh, mm, ss, frac = m[1], m[2] or "", m[3] or "", m[4] or ""
        if int(hh) < 24 and (not mm or int(mm) < 60) and (not ss or int(ss) < 61):
            return hh + mm + ss + frac
    raise StudyListError(f"{key}: {text[:40]!r} is not a time (use 10:56:20, 10:56 or 105620)")


def _parse_int(key: str, text: str) -> int:
    if not _INT_RE.match(text.strip()):
        raise StudyListError(f"{key}: {text[:40]!r} is not a whole number")
    return int(text)


def _month_back(day: date) -> date:
    year, month = (day.year, day.month - 1) if day.month > 1 else (day.year - 1, 12)
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _special_range(word: str, today: date) -> tuple[date, date]:
    if word == "today":
        return today, today
    if word == "yesterday":
        return today - timedelta(days=1), today - timedelta(days=1)
    if word == "pastweek":
        return today - timedelta(days=7), today
    return _month_back(today), today


def _operand(key: Key, text: str) -> Any:
    """One operand read by the key's kind (dates as YYYYMMDD strings)."""
    if key.kind in (Kind.DATE, Kind.DATETIME):
        return _parse_date(key.name, text)
    if key.kind is Kind.TIME:
        return _parse_time(key.name, text)
    if key.kind is Kind.INT:
        return _parse_int(key.name, text)
    return text


def parse_condition(name: str, raw: str, today: date) -> Condition | None:
    """One ``key=value`` parameter → a Condition (None for an empty value or a lone ``*``)."""
    key = KEYS.get(name.strip().lower())
    if key is None:
        raise StudyListError(
            f"unknown search key {name[:64]!r}; use one of {', '.join(sorted(KEYS))} "
            f"(and {', '.join(sorted(RESERVED))})"
        )
    if len(raw) > MAX_VALUE_LENGTH:
        raise StudyListError(f"{key.name}: value longer than {MAX_VALUE_LENGTH} characters")
    op, text = _split_operator(raw)
    text = text.strip()
    if op is Op.RANGE:
        if key.kind not in _RANGE_KINDS:
            raise StudyListError(f"{key.name}: a range (~a~b) needs a date, time or number key")
        parts = text.split("~")
        if len(parts) != 3 or parts[0]:
            raise StudyListError(
                f"{key.name}: a range is ~low~high (either end may be empty), not {raw[:40]!r}"
            )
        low = _operand(key, parts[1]) if parts[1].strip() else None
        high = _operand(key, parts[2]) if parts[2].strip() else None
        if low is None and high is None:
            return None
        return Condition(key.name, op, (low, high))
    if not text or (op is Op.EQ and text == "*"):
        if op in (Op.EQ, Op.CONTAINS):
            return None  # universal
        raise StudyListError(f"{key.name}: the operator {op.value} needs a value")
    if key.kind in (Kind.DATE, Kind.DATETIME) and text.lower() in _SPECIAL_DATES:
        if op is not Op.EQ:
            raise StudyListError(f"{key.name}: {text} works only with = (equal)")
        low_d, high_d = _special_range(text.lower(), today)
        return Condition(key.name, Op.RANGE, (low_d.strftime("%Y%m%d"), high_d.strftime("%Y%m%d")))
    if op is Op.CONTAINS and key.kind not in _TEXT_KINDS:
        raise StudyListError(f"{key.name}: contains (=**) works only on text keys")
    if key.kind not in _TEXT_KINDS and ("*" in text or "?" in text):
        raise StudyListError(f"{key.name}: wildcards work only on text keys")
    return Condition(key.name, op, _operand(key, text))


def parse_sort(text: str) -> tuple[tuple[str, bool], ...]:
    """``-studydate,patientname`` → ((name, descending), ...)."""
    out: list[tuple[str, bool]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        desc = part.startswith("-")
        name = part.lstrip("+-").replace("_", "").lower()
        if name not in SORTS:
            raise StudyListError(
                f"cannot sort by {part[:40]!r}; sortable: {', '.join(sorted(SORTS))}"
            )
        out.append((name, desc))
    if len(out) > MAX_SORT_KEYS:
        raise StudyListError(f"at most {MAX_SORT_KEYS} sort columns")
    return tuple(out) or DEFAULT_SORT


def parse(params: Iterable[tuple[str, str]], *, today: date | None = None) -> StudyListQuery:
    """Parse URL parameters (name, raw value) into a StudyListQuery.

    ``sort`` is read here; ``limit``/``offset`` are the caller's. ``today`` (the local date)
    resolves today/yesterday/pastweek/pastmonth.
    """
    today = today or date.today()
    query = StudyListQuery()
    total = 0
    for name, raw in params:
        lowered = name.strip().lower()
        if lowered == "sort":
            query.sort = parse_sort(raw)
            continue
        if lowered in RESERVED:
            continue
        cond = parse_condition(name, raw, today)
        if cond is None:
            continue  # a known key with a universal value: no condition
        values = query.conditions.setdefault(cond.key, [])
        values.append(cond)
        total += 1
        if len(values) > MAX_VALUES_PER_KEY:
            raise StudyListError(f"{cond.key}: more than {MAX_VALUES_PER_KEY} values")
        if total > MAX_CONDITIONS:
            raise StudyListError(f"more than {MAX_CONDITIONS} search conditions")
    return query


# -- SQL ------------------------------------------------------------------------------------


def _day_start(yyyymmdd: str) -> datetime:
    """Local midnight of a date as the naive UTC timestamp the index stores."""
    d = datetime.strptime(yyyymmdd, "%Y%m%d").date()
    return datetime.combine(d, dtime()).astimezone(UTC).replace(tzinfo=None)


def _next_day(yyyymmdd: str) -> str:
    d = datetime.strptime(yyyymmdd, "%Y%m%d").date() + timedelta(days=1)
    return d.strftime("%Y%m%d")


class _Builder:
    """Conditions → SQL for one dialect and one pn_case_insensitive setting."""

    def __init__(self, dialect: str, pn_case_insensitive: bool, semi: str = "exists") -> None:
        self.dialect = dialect
        self.fold_pn = pn_case_insensitive
        #: lower-level keys as correlated ``EXISTS`` probes or as ``study.id IN (...)``
        self.semi = semi
        self.only_below: tuple[list[ColumnElement[bool]], bool] | None = None

    # -- values and columns ---------------------------------------------------------------
    def _json_text(self, tag: str) -> Any:
        col = INSTANCE.c.attributes
        if self.dialect == "postgresql":
            return func.jsonb_extract_path_text(cast(col, JSONB), tag, "Value", "0")
        path = f'$."{tag}".Value[0]'
        if self.dialect == "sqlite":
            return func.json_extract(col, path)
        return func.json_unquote(func.json_extract(col, path))

    def _raw_column(self, key: Key) -> Any:
        if key.level == "json":
            return func.coalesce(self._json_text(key.tag), "")
        return key.column

    def _folded(self, key: Key) -> bool:
        """Whether the key matches case-insensitively through upper() (or SQLite's LIKE)."""
        return key.kind is Kind.TEXT or (
            key.kind is Kind.PN and self.fold_pn and key.name != "patientname"
        )

    def _text_column(self, key: Key) -> tuple[Any, Any]:
        """(column expression, value normaliser) for a text-kind key."""
        if key.kind is Kind.PN and self.fold_pn and key.name == "patientname":
            return PATIENT.c.patient_name_search, search_name
        if self._folded(key):
            return func.upper(self._raw_column(key)), str.upper
        if key.kind is Kind.CS:
            return key.column, str.upper
        return key.column, str

    def _wildcard(self, col: Any, pattern: str) -> ColumnElement[bool]:
        if self.dialect == "sqlite":
            return col.op("GLOB")(_glob_pattern(pattern))
        return col.like(_like_pattern(pattern), escape="!")

    def _text(self, key: Key, c: Condition) -> ColumnElement[bool]:
        value = c.value
        if self.dialect == "sqlite" and self._folded(key) and c.op in _LIKE_OPS:
            # SQLite's LIKE ignores ASCII case, as its upper() folds only ASCII: the same
            # matches without an upper() per row (3x faster scans).
            raw = self._raw_column(key)
            pattern = f"*{value}*" if c.op is Op.CONTAINS else value
            like = raw.like(_like_pattern(pattern), escape="!")
            return not_(like) if c.op is Op.NE else like
        col, norm = self._text_column(key)
        if c.op is Op.CONTAINS:
            fragment = value.upper() if norm is not str else value
            return self._wildcard(col, f"*{fragment}*")
        wild = "*" in value or "?" in value
        if c.op is Op.EQ:
            return self._wildcard(col, norm(value)) if wild else col == norm(value)
        if c.op is Op.NE:
            return not_(self._wildcard(col, norm(value))) if wild else col != norm(value)
        return and_(col != "", self._compare(col, c.op, norm(value)))

    @staticmethod
    def _compare(col: Any, op: Op, value: Any) -> ColumnElement[bool]:
        return {
            Op.GT: col > value,
            Op.GE: col >= value,
            Op.LT: col < value,
            Op.LE: col <= value,
        }[op]

    def _date(self, key: Key, c: Condition) -> ColumnElement[bool]:
        col = key.column
        if c.op is Op.RANGE:
            low, high = c.value
            conds = [col != ""]
            if low:
                conds.append(col >= low)
            if high:
                conds.append(col <= high)
            return and_(*conds)
        if c.op is Op.EQ:
            return col == c.value
        if c.op is Op.NE:
            return col != c.value
        return and_(col != "", self._compare(col, c.op, c.value))

    def _time(self, key: Key, c: Condition) -> ColumnElement[bool]:
        """Times match at the precision given: 10:56 is [1056, 1057)."""
        col = key.column
        nonempty = col != ""
        if c.op is Op.RANGE:
            low, high = c.value
            conds = [nonempty]
            if low:
                conds.append(col >= low)
            if high:
                conds.append(col < _next_prefix(high))
            return and_(*conds)
        v = c.value
        after = _next_prefix(v)
        return {
            Op.EQ: and_(col >= v, col < after),
            Op.NE: not_(and_(col >= v, col < after)),
            Op.GT: col >= after,
            Op.GE: col >= v,
            Op.LT: and_(nonempty, col < v),
            Op.LE: and_(nonempty, col < after),
        }[c.op]

    def _datetime(self, key: Key, c: Condition) -> ColumnElement[bool]:
        """A timestamp column searched by (local) date."""
        col = key.column
        if c.op is Op.RANGE:
            low, high = c.value
            conds = [col.is_not(None)]
            if low:
                conds.append(col >= _day_start(low))
            if high:
                conds.append(col < _day_start(_next_day(high)))
            return and_(*conds)
        start, end = _day_start(c.value), _day_start(_next_day(c.value))
        return {
            Op.EQ: and_(col >= start, col < end),
            Op.NE: or_(col < start, col >= end),
            Op.GT: col >= end,
            Op.GE: col >= start,
            Op.LT: col < start,
            Op.LE: col < end,
        }[c.op]

    def _int(self, key: Key, c: Condition) -> ColumnElement[bool]:
        col = key.column
        if c.op is Op.RANGE:
            low, high = c.value
            conds = [col.is_not(None)]
            if low is not None:
                conds.append(col >= low)
            if high is not None:
                conds.append(col <= high)
            return and_(*conds)
        if c.op is Op.EQ:
            return col == c.value
        if c.op is Op.NE:
            return or_(col.is_(None), col != c.value)
        return self._compare(col, c.op, c.value)

    def condition(self, c: Condition) -> ColumnElement[bool]:
        """The SQL for one condition on its own table's row."""
        key = KEYS[c.key]
        if key.kind is Kind.DATE:
            return self._date(key, c)
        if key.kind is Kind.TIME:
            return self._time(key, c)
        if key.kind is Kind.DATETIME:
            return self._datetime(key, c)
        if key.kind is Kind.INT:
            return self._int(key, c)
        return self._text(key, c)

    # -- the whole WHERE ------------------------------------------------------------------
    def where(self, query: StudyListQuery) -> tuple[list[ColumnElement[bool]], bool]:
        """(conditions on study ⨝ patient, whether any needs the patient table)."""
        out: list[ColumnElement[bool]] = []
        needs_patient = False
        below: list[ColumnElement[bool]] = []  # positive lower-level keys: same series
        below_instance = False
        for name, conds in query.conditions.items():
            key = KEYS[name]
            if key.level in ("patient", "study"):
                needs_patient |= key.level == "patient"
                out.append(or_(*(self.condition(c) for c in conds)))
                continue
            deep = key.level in ("instance", "json")
            if not any(c.negative for c in conds):
                below.append(or_(*(self.condition(c) for c in conds)))
                below_instance |= deep
                continue
            alternatives = []
            for c in conds:
                if c.negative:
                    eq = Condition(c.key, Op.EQ, c.value)
                    alternatives.append(self._has([self.condition(eq)], deep, negate=True))
                else:
                    alternatives.append(self._has([self.condition(c)], deep))
            out.append(or_(*alternatives))
        #: when the only conditions are positive series/instance ones: (conditions, whether
        #: they need the instance table), for counting distinct study keys of the series
        self.only_below = (below, below_instance) if below and not out else None
        if below:
            out.append(self._has(below, below_instance))
        return out, needs_patient

    def _has(
        self, conds: list[ColumnElement[bool]], instance: bool, negate: bool = False
    ) -> ColumnElement[bool]:
        """The study has (``negate``: has no) series/instance matching all ``conds``.

        ``EXISTS`` probes suit a page read in index order that stops early; ``IN`` lets the
        database read the lower level's index once (counts, and pages with few matches)."""
        frm: Any = SERIES
        if instance:
            frm = SERIES.join(INSTANCE, INSTANCE.c.series_fk == SERIES.c.id)
        sub = select(SERIES.c.study_fk).select_from(frm)
        if self.semi == "in":
            sub = sub.where(*conds)
            return STUDY.c.id.not_in(sub) if negate else STUDY.c.id.in_(sub)
        sub = sub.where(SERIES.c.study_fk == STUDY.c.id, *conds)
        if self.dialect in ("mysql", "mariadb"):
            # MariaDB turns EXISTS into a semi-join that materialises every matching series
            # before the first row (0.2 s at 100k studies); a scalar subquery stays a probe.
            first = sub.limit(1).scalar_subquery()
            return first.is_(None) if negate else first.is_not(None)
        probe = sub.exists()
        return not_(probe) if negate else probe


@dataclass
class Page:
    """One page of the list and the number of studies matching."""

    total: int
    items: list[dict[str, Any]]


class StudyList:
    """Runs study-list searches on one index database (see the module docstring)."""

    def __init__(self, engine: Engine, *, pn_case_insensitive: bool = True) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.pn_case_insensitive = pn_case_insensitive

    def _builder(self, semi: str = "exists") -> _Builder:
        return _Builder(self.dialect, self.pn_case_insensitive, semi)

    def statement(
        self, query: StudyListQuery, limit: int, offset: int, *, ids: list[int] | None = None
    ) -> Select:
        """SELECT of one page: the item columns, sorted, stable (study id breaks ties).

        Without ``ids`` the conditions filter the studies as the database walks them in the
        sort order (series/instance keys as EXISTS probes): best when matches are common.
        With ``ids`` (the matching study ids, found first) only those rows are read and
        sorted."""
        needs_patient = False
        if ids is not None:
            where = [STUDY.c.id.in_(ids)]
        else:
            where, needs_patient = self._builder().where(query)
        order: list[Any] = []
        last_desc = True
        for name, desc in query.sort:
            for col in SORTS[name]:
                order.append(col.desc() if desc else col.asc())
                needs_patient |= col.table is PATIENT
            last_desc = desc
        order.append(STUDY.c.id.desc() if last_desc else STUDY.c.id.asc())
        # The page's ids first (a narrow sort: the sort keys and the id), then its rows: a
        # database that sorts whole rows (MariaDB's filesort) sorts 50 of them, not all.
        frm: Any = STUDY
        if needs_patient:
            frm = STUDY.join(PATIENT, PATIENT.c.id == STUDY.c.patient_fk)
        page = select(STUDY.c.id.label("page_id")).select_from(frm)
        if where:
            page = page.where(and_(*where))
        page_ids = page.order_by(*order).limit(limit).offset(offset).subquery("page")
        return (
            select(*ITEM_COLUMNS)
            .select_from(
                STUDY.join(page_ids, page_ids.c.page_id == STUDY.c.id).join(
                    PATIENT, PATIENT.c.id == STUDY.c.patient_fk
                )
            )
            .order_by(*order)
        )

    def _filtered(self, columns: Select, query: StudyListQuery) -> Select:
        """``columns`` FROM study (⨝ patient when a patient key is used) WHERE the
        conditions. Series/instance keys are ``study.id IN (...)`` when they are the only
        conditions (the database reads the lower level's index once) and EXISTS probes when
        study/patient conditions select the studies to probe (as in archive/query.py)."""
        upper = any(KEYS[k].level in ("patient", "study") for k in query.conditions)
        where, needs_patient = self._builder("exists" if upper else "in").where(query)
        frm: Any = STUDY
        if needs_patient:
            frm = STUDY.join(PATIENT, PATIENT.c.id == STUDY.c.patient_fk)
        stmt = columns.select_from(frm)
        if where:
            stmt = stmt.where(and_(*where))
        return stmt

    def count_statement(self, query: StudyListQuery) -> Select:
        """SELECT count(*) over the same conditions (the patient join only when needed).

        Positive series/instance conditions alone (``modality=CT&modality=MR``) are counted
        as distinct study keys in the series index, without visiting the studies (as
        archive/query.py counts a lone semi-join: every series has its study)."""
        below = self._only_below(query)
        if below is not None:
            return below.with_only_columns(func.count(distinct(SERIES.c.study_fk)))
        return self._filtered(select(func.count()), query)

    def ids_statement(self, query: StudyListQuery, at_most: int) -> Select:
        """The ids of up to ``at_most`` matching studies (any order); for series/instance
        conditions alone, the distinct study keys read from the series index."""
        below = self._only_below(query)
        if below is not None:
            return below.with_only_columns(SERIES.c.study_fk).distinct().limit(at_most)
        return self._filtered(select(STUDY.c.id), query).limit(at_most)

    def _only_below(self, query: StudyListQuery) -> Select | None:
        """``SELECT ... FROM series [⨝ instance] WHERE <conditions>`` when the query has only
        positive series/instance conditions, else None."""
        builder = self._builder("in")
        builder.where(query)
        if builder.only_below is None:
            return None
        conds, instance = builder.only_below
        frm: Any = SERIES
        if instance:
            frm = SERIES.join(INSTANCE, INSTANCE.c.series_fk == SERIES.c.id)
        return select(SERIES.c.study_fk).select_from(frm).where(*conds)

    def search(self, query: StudyListQuery, *, limit: int = 50, offset: int = 0) -> Page:
        """The page and the total, read on one connection.

        With conditions, the ids of up to ``DRIVE_FROM_MATCHES`` + 1 matches are read first
        (one pass over whatever index or scan the conditions need). When that is all of
        them, they are the total and the page reads and sorts only those rows; when there
        are more, a match turns up every few rows, so ``count(*)`` plus a page filtered
        while walking the sort order (stopping early) is cheaper. (``count(*) OVER ()``
        with the ids in one pass was slower: the databases buffer every match for it.)
        Measured: bench/studylist.py."""
        with self.engine.connect() as conn:
            ids: list[int] | None = None
            if query.conditions:
                found = conn.execute(self.ids_statement(query, DRIVE_FROM_MATCHES + 1))
                ids = [int(i) for i in found.scalars()]
                if len(ids) > DRIVE_FROM_MATCHES:
                    ids = None
            if ids is None:
                total = int(conn.execute(self.count_statement(query)).scalar_one())
            else:
                total = len(ids)
            rows: list[Any] = []
            if total and offset < total:
                stmt = self.statement(query, limit, offset, ids=ids)
                rows = list(conn.execute(stmt).all())
        return Page(total, [_item(r._mapping) for r in rows])


def _item(row: Any) -> dict[str, Any]:
    out = {k: ("" if v is None else v) for k, v in dict(row).items()}
    out["modalities_in_study"] = [m for m in (row["modalities_in_study"] or "").split("\\") if m]
    received = row["received_at"]
    out["received_at"] = (
        received.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
        if isinstance(received, datetime)
        else (received or "")
    )
    return out


def search(
    engine: Engine,
    params: Iterable[tuple[str, str]],
    *,
    limit: int = 50,
    offset: int = 0,
    pn_case_insensitive: bool = True,
    today: date | None = None,
) -> Page:
    """Shortcut: parse ``params`` and run the search."""
    query = parse(params, today=today)
    return StudyList(engine, pn_case_insensitive=pn_case_insensitive).search(
        query, limit=limit, offset=offset
    )


__all__ = [
    "KEYS",
    "SORTS",
    "Condition",
    "Op",
    "Page",
    "StudyList",
    "StudyListError",
    "StudyListQuery",
    "parse",
    "parse_condition",
    "parse_sort",
    "search",
]
