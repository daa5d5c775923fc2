"""archive.query: PS3.4 §C.2.2.2 matching types, model rules and SQL shapes (no database);
dicom.scp.find: identifier → query and the response character set."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import create_engine
from sqlalchemy.dialects import mysql, postgresql, sqlite

from pacsbox.archive.index.writer import search_name
from pacsbox.archive.query import (
    KeyMatch,
    Level,
    MatchType,
    Model,
    Query,
    QueryEngine,
    QueryError,
    _glob_pattern,
    _like_pattern,
    _next_prefix,
    _py_match,
    match_for,
)
from pacsbox.dicom.scp.find import build_query, response_charset


@pytest.mark.parametrize(
    ("keyword", "value", "kind", "parsed"),
    [
        ("PatientName", "", MatchType.UNIVERSAL, None),
        ("PatientName", None, MatchType.UNIVERSAL, None),
        ("PatientName", "*", MatchType.UNIVERSAL, None),
        ("PatientName", "SMITH^JOHN", MatchType.SINGLE, "SMITH^JOHN"),
        ("PatientName", "SM?TH*", MatchType.WILDCARD, "SM?TH*"),
        ("AccessionNumber", "A%_1", MatchType.SINGLE, "A%_1"),
        ("StudyDate", "20240101", MatchType.SINGLE, "20240101"),
        ("StudyDate", "20240101-20241231", MatchType.RANGE, ("20240101", "20241231")),
        ("StudyDate", "20240101-", MatchType.RANGE, ("20240101", "")),
        ("StudyDate", "-20241231", MatchType.RANGE, ("", "20241231")),
        ("StudyTime", "0800-1200", MatchType.RANGE, ("0800", "1200")),
        ("StudyInstanceUID", "1.2.3", MatchType.SINGLE, "1.2.3"),
        ("StudyInstanceUID", "1.2.3\\1.2.4", MatchType.UID_LIST, ("1.2.3", "1.2.4")),
        ("ModalitiesInStudy", "CT\\MR", MatchType.VALUE_LIST, ("CT", "MR")),
        ("SeriesNumber", "3", MatchType.SINGLE, "3"),
    ],
)
def test_matching_type_by_value(keyword, value, kind, parsed) -> None:
    m = match_for(keyword, value)
    assert m.type is kind
    assert m.value == parsed


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("StudyDate", "2024"),  # not a DA
        ("StudyDate", "2024-01-01"),  # dashes make a range of non-dates
        ("StudyTime", "25h"),
        ("StudyInstanceUID", "1.2.3'; DROP TABLE study; --"),
        ("SeriesNumber", "three"),
        ("PatientName", "A" * 5000),  # huge value
        ("StudyDate", "20240101\\20240102"),
    ],
)
def test_invalid_values_are_refused(keyword, value) -> None:
    with pytest.raises(QueryError) as info:
        match_for(keyword, value)
    assert info.value.status == 0xA900


def test_sequence_keys() -> None:
    empty = match_for("RequestAttributesSequence", [])
    assert empty.type is MatchType.UNIVERSAL
    empty_item = match_for("RequestAttributesSequence", [{"RequestedProcedureID": None}])
    assert empty_item.type is MatchType.UNIVERSAL
    seq = match_for("RequestAttributesSequence", [{"RequestedProcedureID": "RP*"}])
    assert seq.type is MatchType.SEQUENCE
    assert seq.value[0] == KeyMatch("RequestedProcedureID", MatchType.WILDCARD, "RP*")
    with pytest.raises(QueryError):
        match_for("RequestAttributesSequence", [{}, {}])


def test_wildcard_escapes() -> None:
    assert _like_pattern("A%_!*?") == "A!%!_!!%_"
    assert _glob_pattern("A[1]*") == "A[[]1]*"
    assert _next_prefix("1200") == "1201"
    assert search_name("Müller^Jürgen^^^") == "MÜLLER^JÜRGEN"
    assert search_name("doe^john=") == "DOE^JOHN"


def test_python_matching_of_json_elements() -> None:
    pn = {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    assert _py_match(match_for("OperatorsName", "doe*"), pn, True)
    assert not _py_match(match_for("OperatorsName", "doe*"), pn, False)
    seq = {
        "vr": "SQ",
        "Value": [
            {"00401001": {"vr": "SH", "Value": ["RP1"]}},
            {"00401001": {"vr": "SH", "Value": ["XX9"]}},
        ],
    }
    assert _py_match(
        match_for("RequestAttributesSequence", [{"RequestedProcedureID": "XX?"}]), seq, True
    )
    assert not _py_match(
        match_for("RequestAttributesSequence", [{"RequestedProcedureID": "ZZ*"}]), seq, True
    )
    dates = {"vr": "DA", "Value": ["20240105"]}
    assert _py_match(match_for("ContentDate", "20240101-20240131"), dates, True)
    assert not _py_match(match_for("ContentDate", "20240201-"), dates, True)


def _sql(query: Query, dialect) -> str:
    engine = create_engine("sqlite://")
    qe = QueryEngine(engine)
    qe.dialect = dialect.name
    stmt, _, _ = qe.statement(query)
    return str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def test_sql_per_dialect() -> None:
    q = Query(
        Level.STUDY, [match_for("PatientName", "smith*"), match_for("AccessionNumber", "A_1")]
    )
    lite = _sql(q, sqlite.dialect())
    assert "patient_name_search GLOB 'SMITH*'" in lite
    assert "accession_number = 'A_1'" in lite
    pg = _sql(Query(Level.STUDY, [match_for("AccessionNumber", "A_%*")]), postgresql.dialect())
    assert "LIKE 'A!_!%%%%' ESCAPE '!'" in pg or "LIKE 'A!_!%%' ESCAPE '!'" in pg
    my = _sql(Query(Level.STUDY, [match_for("PatientName", "Doe?")]), mysql.dialect())
    assert "patient_name_search LIKE 'DOE_'" in my


def test_case_sensitive_names_use_the_name_column() -> None:
    q = Query(Level.STUDY, [match_for("PatientName", "Smith*")], pn_case_insensitive=False)
    sql = _sql(q, sqlite.dialect())
    assert "patient.patient_name GLOB 'Smith*'" in sql


def test_modalities_in_study_uses_series_index() -> None:
    sql = _sql(Query(Level.STUDY, [match_for("ModalitiesInStudy", "MR")]), sqlite.dialect())
    assert "study.id IN (SELECT series.study_fk" in sql
    assert "series.modality = 'MR'" in sql
    assert "modalities_in_study =" not in sql and "LIKE" not in sql


def test_relational_keys_restrict_through_subqueries() -> None:
    q = Query(Level.STUDY, [match_for("Modality", "CT"), match_for("SOPInstanceUID", "1.2")])
    sql = _sql(q, sqlite.dialect())
    assert (
        "study.id IN (SELECT series.study_fk" in sql and "instance.sop_instance_uid = '1.2'" in sql
    )
    q = Query(Level.PATIENT, [match_for("StudyDate", "20240101-")], model=Model.PATIENT_ROOT)
    sql = _sql(q, sqlite.dialect())
    assert "patient.id IN (SELECT study.patient_fk" in sql


def test_date_range_excludes_empty_values() -> None:
    sql = _sql(Query(Level.STUDY, [match_for("StudyDate", "-20240101")]), sqlite.dialect())
    assert "study.study_date != ''" in sql and "study.study_date <= '20240101'" in sql


def test_combined_date_time_range() -> None:
    q = Query(
        Level.STUDY,
        [match_for("StudyDate", "20240101-20240102"), match_for("StudyTime", "1000-1100")],
        combined_datetime=True,
    )
    sql = _sql(q, sqlite.dialect())
    assert "study.study_date = '20240101' AND study.study_time >= '1000'" in sql
    assert "study.study_date = '20240102' AND study.study_time < '1101'" in sql


def test_hierarchical_rules() -> None:
    ok = Query(
        Level.SERIES,
        [match_for("StudyInstanceUID", "1.2.3"), match_for("Modality", "CT")],
        relational=False,
    )
    ok.validate()
    with pytest.raises(QueryError, match="required"):
        Query(Level.SERIES, [match_for("Modality", "CT")], relational=False).validate()
    with pytest.raises(QueryError, match="below"):
        Query(Level.STUDY, [match_for("Modality", "CT")], relational=False).validate()
    with pytest.raises(QueryError, match="only the unique key"):
        Query(
            Level.SERIES,
            [match_for("StudyInstanceUID", "1.2.3"), match_for("PatientName", "X*")],
            relational=False,
        ).validate()
    # Patient Root needs the Patient ID above the study level
    with pytest.raises(QueryError, match="PatientID"):
        Query(Level.STUDY, [], model=Model.PATIENT_ROOT, relational=False).validate()
    with pytest.raises(QueryError, match="does not exist"):
        Query(Level.SERIES, [], model=Model.PATIENT_STUDY_ONLY).validate()
    with pytest.raises(QueryError, match="does not exist"):
        Query(Level.PATIENT, [], model=Model.STUDY_ROOT).validate()


def test_return_keys_include_unique_keys_of_upper_levels() -> None:
    q = Query(Level.IMAGE, [match_for("Rows", "")], model=Model.PATIENT_ROOT)
    assert q.return_keywords()[:4] == [
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
    ]


def _identifier(**keys) -> Dataset:
    ds = Dataset()
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def test_build_query_from_identifier() -> None:
    ds = _identifier(QueryRetrieveLevel="STUDY", PatientName="Doe*", StudyDate="", Modality="MR")
    ds.add_new(0x00091010, "LO", "private")
    query, requested = build_query(ds, Model.STUDY_ROOT, relational=True, pn_case_insensitive=True)
    assert query.level is Level.STUDY
    assert {k.keyword for k in query.keys} == {"PatientName", "StudyDate", "Modality"}
    assert 0x00091010 in [int(e.tag) for e in requested]  # returned zero-length


@pytest.mark.parametrize(
    "ds",
    [
        _identifier(PatientName="x"),  # no level
        _identifier(QueryRetrieveLevel="FOO"),
        _identifier(QueryRetrieveLevel="PATIENT"),  # not in Study Root
    ],
)
def test_bad_identifiers(ds) -> None:
    with pytest.raises(QueryError) as info:
        build_query(ds, Model.STUDY_ROOT, relational=True, pn_case_insensitive=True)
    assert info.value.status == 0xA900


def test_wrong_vr_refused() -> None:
    ds = _identifier(QueryRetrieveLevel="STUDY")
    ds.add_new(0x00080020, "UL", 5)  # Study Date sent as UL
    with pytest.raises(QueryError, match="VR UL"):
        build_query(ds, Model.STUDY_ROOT, relational=True, pn_case_insensitive=True)


def test_response_charset() -> None:
    assert response_charset(["Doe^John"], []) == []
    assert response_charset(["Doe^John"], ["ISO_IR 100"]) == ["ISO_IR 100"]
    assert response_charset(["Müller"], ["ISO_IR 100"]) == ["ISO_IR 100"]
    assert response_charset(["Müller"], []) == ["ISO_IR 192"]
    assert response_charset(["山田^太郎"], ["ISO_IR 100"]) == ["ISO_IR 192"]
    assert response_charset(["Ωμέγα"], ["ISO_IR 126"]) == ["ISO_IR 126"]


def test_semi_join_drives_only_without_other_conditions() -> None:
    alone = _sql(Query(Level.STUDY, [match_for("ModalitiesInStudy", "MR")]), sqlite.dialect())
    assert "study.id IN (SELECT series.study_fk" in alone and "EXISTS" not in alone
    both = _sql(
        Query(
            Level.STUDY,
            [match_for("ModalitiesInStudy", "MR"), match_for("StudyDate", "20240101-20240110")],
        ),
        sqlite.dialect(),
    )
    assert "EXISTS (SELECT series.study_fk" in both and "series.study_fk = study.id" in both
    assert " IN (SELECT" not in both
