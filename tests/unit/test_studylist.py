"""The study-list parameter parser (SPEC E4, archive/studylist.py): keys, operators, dates,
times, ranges, relative dates, sort, limits and the error messages."""

from __future__ import annotations

import re
from datetime import date

import pytest

from pacsbox.archive.studylist import (
    MAX_VALUES_PER_KEY,
    Condition,
    Op,
    StudyListError,
    parse,
    parse_condition,
    parse_sort,
)

TODAY = date(2026, 3, 31)


def cond(name: str, raw: str) -> Condition | None:
    return parse_condition(name, raw, TODAY)


@pytest.mark.parametrize(
    ("raw", "op", "value"),
    [
        ("ct", Op.EQ, "ct"),
        ("=ct", Op.EQ, "ct"),  # key==ct
        ("==ct", Op.EQ, "ct"),  # key===ct
        ("!=ct", Op.NE, "ct"),
        (">>ct", Op.GT, "ct"),
        (">=ct", Op.GE, "ct"),
        ("<<ct", Op.LT, "ct"),
        ("<=ct", Op.LE, "ct"),
        ("**ct", Op.CONTAINS, "ct"),
        ("c*", Op.EQ, "c*"),
        ("c?", Op.EQ, "c?"),
    ],
)
def test_operators(raw: str, op: Op, value: str) -> None:
    assert cond("modality", raw) == Condition("modality", op, value)


def test_keys_are_case_insensitive() -> None:
    assert cond("PatientID", "123") == Condition("patientid", Op.EQ, "123")
    assert cond("STUDYDATE", "2018/01/23") == Condition("studydate", Op.EQ, "20180123")


@pytest.mark.parametrize("raw", ["2018/01/23", "20180123", "2018-01-23"])
def test_date_formats(raw: str) -> None:
    assert cond("studydate", raw) == Condition("studydate", Op.EQ, "20180123")
    assert cond("patientbirthdate", ">=" + raw) == Condition("patientbirthdate", Op.GE, "20180123")


@pytest.mark.parametrize(
    ("raw", "low", "high"),
    [
        ("~2013/11/25~2016/08/31", "20131125", "20160831"),
        ("=~2013/11/25~2016/08/31", "20131125", "20160831"),  # studydate==~a~b
        ("~2013/11/25~", "20131125", None),
        ("~~2016/08/31", None, "20160831"),
    ],
)
def test_date_ranges(raw: str, low: str | None, high: str | None) -> None:
    assert cond("studydate", raw) == Condition("studydate", Op.RANGE, (low, high))


@pytest.mark.parametrize(
    ("word", "low", "high"),
    [
        ("today", "20260331", "20260331"),
        ("yesterday", "20260330", "20260330"),
        ("pastweek", "20260324", "20260331"),
        ("pastmonth", "20260228", "20260331"),  # 31 March: a month back is clamped to 28 Feb
        ("TODAY", "20260331", "20260331"),
    ],
)
def test_relative_dates(word: str, low: str, high: str) -> None:
    assert cond("studydate", word) == Condition("studydate", Op.RANGE, (low, high))
    assert cond("receiveddate", word) == Condition("receiveddate", Op.RANGE, (low, high))


def test_times_and_numbers() -> None:
    assert cond("studytime", "10:56:20") == Condition("studytime", Op.EQ, "105620")
    assert cond("studytime", "10:56") == Condition("studytime", Op.EQ, "1056")
    assert cond("seriestime", "<<105620.5") == Condition("seriestime", Op.LT, "105620.5")
    assert cond("seriesnumber", "3") == Condition("seriesnumber", Op.EQ, 3)
    assert cond("seriesnumber", "~2~") == Condition("seriesnumber", Op.RANGE, (2, None))


def test_universal_values_are_no_condition() -> None:
    assert cond("patientname", "") is None
    assert cond("patientname", "*") is None
    assert cond("patientname", "**") is None
    assert cond("studydate", "~~") is None


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("nosuchkey", "1", "unknown search key 'nosuchkey'"),
        ("modality", ">ct", "unknown operator"),
        ("modality", "!ct", "unknown operator"),
        ("studydate", "2018/13/01", "is not a date"),
        ("studydate", "yesterday-ish", "is not a date"),
        ("studydate", "**2018", "contains (=**) works only on text keys"),
        ("studydate", "2018*", "wildcards work only on text keys"),
        ("studydate", ">>today", "today works only with = (equal)"),
        ("studydate", "~2018/01/01", "a range is ~low~high"),
        ("studydate", "~a~b~c", "a range is ~low~high"),
        ("studytime", "25:00", "is not a time"),
        ("seriesnumber", "x", "is not a whole number"),
        ("modality", "~a~b", "a range (~a~b) needs a date, time or number key"),
        ("modality", "!=", "the operator =!= needs a value"),
        ("modality", "x" * 2000, "longer than 1024"),
    ],
)
def test_errors(name: str, raw: str, message: str) -> None:
    with pytest.raises(StudyListError, match=re.escape(message)):
        cond(name, raw)


def test_parse_groups_repeated_keys_and_reads_sort() -> None:
    q = parse(
        [
            ("modality", "ct"),
            ("Modality", "mr"),
            ("patientid", "1"),
            ("sort", "-patient_name,studydate"),
            ("limit", "10"),
            ("offset", "5"),
            ("accessionnumber", ""),
        ],
        today=TODAY,
    )
    assert [c.value for c in q.conditions["modality"]] == ["ct", "mr"]
    assert list(q.conditions) == ["modality", "patientid"]
    assert q.sort == (("patientname", True), ("studydate", False))


def test_too_many_values() -> None:
    with pytest.raises(StudyListError, match="more than"):
        parse([("patientid", str(i)) for i in range(MAX_VALUES_PER_KEY + 1)], today=TODAY)


def test_sort() -> None:
    assert parse_sort("") == (("studydate", True),)
    assert parse_sort("numinstances,-received_at") == (
        ("numinstances", False),
        ("receivedat", True),
    )
    with pytest.raises(StudyListError, match="cannot sort by 'password'"):
        parse_sort("password")
    with pytest.raises(StudyListError, match="at most"):
        parse_sort("studydate,studytime,patientname,patientid,patientsex,sourceae")
