"""archive.query against SQLite, PostgreSQL and MariaDB: every matching type of PS3.4
§C.2.2.2 on a small index filled through the real ingest path."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import text

from pacsbox.archive.index.writer import counts
from pacsbox.archive.query import Level, Model, Query, QueryEngine, QueryError, match_for
from tests.helpers import make_ct
from tests.integration.test_ingest import encode

STUDY1, STUDY2, STUDY3, STUDY4 = (generate_uid() for _ in range(4))


def _store(archive, ds) -> None:
    archive.ingest.store_dataset(
        encode(ds),
        "1.2.840.10008.1.2.1",
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        source_ae="TEST",
    )


def _populate(archive) -> None:
    def ds(study, patient, name, modality, date, time, acc, series=None, **extra):
        d = make_ct(study, series or generate_uid(), patient_id=patient, patient_name=name)
        d.Modality, d.StudyDate, d.StudyTime, d.AccessionNumber = modality, date, time, acc
        for k, v in extra.items():
            setattr(d, k, v)
        return d

    s1 = generate_uid()
    _store(archive, ds(STUDY1, "PA", "Smith^John", "CT", "20260101", "101010", "A%_1", s1))
    _store(archive, ds(STUDY1, "PA", "Smith^John", "CT", "20260101", "101010", "A%_1", s1))
    _store(archive, ds(STUDY1, "PA", "Smith^John", "MR", "20260101", "101010", "A%_1"))
    _store(archive, ds(STUDY2, "PA", "Smith^John", "US", "20250601", "080000", "ACC2"))
    req = Dataset()
    req.RequestedProcedureID = "RP77"
    req.ScheduledProcedureStepID = "SPS1"
    mr = ds(STUDY3, "P_B", "Müller^Jürgen", "MR", "20241231", "235959", "X_1")
    mr.RequestAttributesSequence = [req]
    mr.OperatorsName = "Tech^Tom"
    mr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    _store(archive, mr)
    _store(archive, ds(STUDY4, "PC%", "smithson^ann", "OT", "", "", ""))


def _run(archive, level=Level.STUDY, model=Model.STUDY_ROOT, **keys) -> list[dict]:
    pn_ci = keys.pop("pn_ci", True)
    query = Query(
        level,
        [match_for(k, v) for k, v in keys.items()],
        model=model,
        pn_case_insensitive=pn_ci,
    )
    return [row.values for row in QueryEngine(archive.engine).run(query)]


def _studies(rows) -> set[str]:
    return {r["StudyInstanceUID"] for r in rows}


def test_single_universal_wildcard_and_escapes(archive) -> None:
    _populate(archive)
    assert counts(archive.engine)["studies"] == 4
    assert _studies(_run(archive, PatientID="PA")) == {STUDY1, STUDY2}
    assert _studies(_run(archive, PatientID="")) == {STUDY1, STUDY2, STUDY3, STUDY4}
    assert _studies(_run(archive, PatientID="*")) == {STUDY1, STUDY2, STUDY3, STUDY4}
    # SQL metacharacters in values are literals: '_' and '%' do not act as wildcards
    assert _studies(_run(archive, PatientID="P_B")) == {STUDY3}
    assert _studies(_run(archive, PatientID="P_*")) == {STUDY3}
    assert _studies(_run(archive, PatientID="PC%")) == {STUDY4}
    assert _studies(_run(archive, PatientID="P%")) == set()
    assert _studies(_run(archive, AccessionNumber="A%*")) == {STUDY1}
    assert _studies(_run(archive, AccessionNumber="A_*")) == set()
    assert _studies(_run(archive, AccessionNumber="?_1")) == {STUDY3}
    assert _studies(_run(archive, AccessionNumber="A??1")) == {STUDY1}
    assert _studies(_run(archive, AccessionNumber="!*")) == set()
    assert _studies(_run(archive, AccessionNumber="*1")) == {STUDY1, STUDY3}
    # hostile values match nothing and change nothing
    assert _run(archive, PatientName="'; DROP TABLE patient; --") == []
    assert _run(archive, PatientID="%' OR '1'='1") == []
    assert counts(archive.engine)["patients"] == 3


def test_person_names(archive) -> None:
    _populate(archive)
    assert _studies(_run(archive, PatientName="SMITH*")) == {STUDY1, STUDY2, STUDY4}
    assert _studies(_run(archive, PatientName="smith^john")) == {STUDY1, STUDY2}
    assert _studies(_run(archive, PatientName="müller*")) == {STUDY3}
    assert _studies(_run(archive, PatientName="MÜLLER^JÜRGEN")) == {STUDY3}
    assert _studies(_run(archive, PatientName="*^J?RGEN")) == {STUDY3}
    # case-sensitive when pn_case_insensitive is off
    assert _studies(_run(archive, PatientName="Smith*", pn_ci=False)) == {STUDY1, STUDY2}
    assert _studies(_run(archive, PatientName="SMITH*", pn_ci=False)) == set()
    rows = _run(archive, PatientName="müller*")
    assert rows[0]["PatientName"] == "Müller^Jürgen"


def test_dates_times_and_uid_lists(archive) -> None:
    _populate(archive)
    assert _studies(_run(archive, StudyDate="20260101")) == {STUDY1}
    assert _studies(_run(archive, StudyDate="20250101-20251231")) == {STUDY2}
    assert _studies(_run(archive, StudyDate="20250101-")) == {STUDY1, STUDY2}
    # an open start does not match studies without a date
    assert _studies(_run(archive, StudyDate="-20250101")) == {STUDY3}
    assert _studies(_run(archive, StudyTime="0800-1010")) == {STUDY1, STUDY2}
    assert _studies(_run(archive, StudyTime="2359-")) == {STUDY3}
    assert _studies(_run(archive, StudyInstanceUID=f"{STUDY1}\\{STUDY3}\\1.2.3")) == {
        STUDY1,
        STUDY3,
    }
    # combined date-time (PS3.4 C.2.2.2.5.1): 2024-12-31 23:59:59 up to 2026-01-01 10:00
    query = Query(
        Level.STUDY,
        [match_for("StudyDate", "20241231-20260101"), match_for("StudyTime", "2300-1000")],
        combined_datetime=True,
    )
    got = {r.values["StudyInstanceUID"] for r in QueryEngine(archive.engine).run(query)}
    assert got == {STUDY3, STUDY2}


def test_relational_levels_and_counters(archive) -> None:
    _populate(archive)
    # study level restricted by a series-level key
    assert _studies(_run(archive, Modality="MR")) == {STUDY1, STUDY3}
    assert _studies(_run(archive, ModalitiesInStudy="MR")) == {STUDY1, STUDY3}
    assert _studies(_run(archive, ModalitiesInStudy="CT\\US")) == {STUDY1, STUDY2}
    assert _studies(_run(archive, ModalitiesInStudy="M*")) == {STUDY1, STUDY3}
    rows = _run(
        archive,
        StudyInstanceUID=STUDY1,
        ModalitiesInStudy="",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        SOPClassesInStudy="",
        NumberOfPatientRelatedStudies="",
    )
    assert rows == [
        {
            "StudyInstanceUID": STUDY1,
            "ModalitiesInStudy": ["CT", "MR"],
            "NumberOfStudyRelatedSeries": 2,
            "NumberOfStudyRelatedInstances": 3,
            "SOPClassesInStudy": ["1.2.840.10008.5.1.4.1.1.2"],
            "NumberOfPatientRelatedStudies": 2,
        }
    ]
    # patient level (Patient Root), restricted by a study-level key
    patients = _run(
        archive,
        Level.PATIENT,
        Model.PATIENT_ROOT,
        StudyDate="20241231",
        NumberOfPatientRelatedInstances="",
    )
    # a lower-level key has no single value here: the engine leaves it out (SCP: zero-length)
    assert patients == [{"PatientID": "P_B", "NumberOfPatientRelatedInstances": 1}]
    # series level within a study; image level restricted by the series
    series = _run(
        archive,
        Level.SERIES,
        StudyInstanceUID=STUDY1,
        Modality="",
        NumberOfSeriesRelatedInstances="",
    )
    assert sorted((s["Modality"], s["NumberOfSeriesRelatedInstances"]) for s in series) == [
        ("CT", 2),
        ("MR", 1),
    ]
    images = _run(archive, Level.IMAGE, StudyInstanceUID=STUDY1, Modality="CT", SOPClassUID="")
    assert len(images) == 2 and all(i["SOPClassUID"].endswith(".1.2") for i in images)
    assert (
        _run(archive, Level.IMAGE, SOPClassUID="1.2.840.10008.5.1.4.1.1.4")[0]["StudyInstanceUID"]
        == STUDY3
    )
    # Patient/Study Only: no series level
    try:
        _run(archive, Level.SERIES, Model.PATIENT_STUDY_ONLY)
    except QueryError as exc:
        assert exc.status == 0xA900
    else:
        raise AssertionError("series level accepted in the Patient/Study Only model")


def test_sequences_and_stored_attributes(archive) -> None:
    _populate(archive)
    eng = QueryEngine(archive.engine)

    def series(**keys):
        q = Query(Level.SERIES, [match_for(k, v) for k, v in keys.items()])
        return [r.values for r in eng.run(q)]

    hit = series(RequestAttributesSequence=[{"RequestedProcedureID": "RP7?"}])
    assert len(hit) == 1 and hit[0]["StudyInstanceUID"] == STUDY3
    items = hit[0]["RequestAttributesSequence"]["Value"]
    assert items == [{"00401001": {"vr": "SH", "Value": ["RP77"]}}]  # only the asked key
    assert series(RequestAttributesSequence=[{"RequestedProcedureID": "NOPE"}]) == []
    # an empty item returns the whole sequence
    whole = series(StudyInstanceUID=STUDY3, RequestAttributesSequence=[])
    assert "00400009" in whole[0]["RequestAttributesSequence"]["Value"][0]
    assert len(series(OperatorsName="tech*")) == 1
    # any stored attribute at image level
    img = Query(Level.IMAGE, [match_for("PhotometricInterpretation", ""), match_for("HighBit", "")])
    rows = [r.values for r in eng.run(img)]
    assert rows and rows[0]["HighBit"]["Value"] == [11]


def test_results_are_streamed(archive) -> None:
    _populate(archive)
    for i in range(30):
        _store(archive, make_ct(patient_id=f"S{i}", patient_name=f"Stream^{i}"))
    eng = QueryEngine(archive.engine, batch=5)
    it = eng.run(Query(Level.STUDY, [match_for("PatientName", "STREAM*")]))
    first = next(it)
    assert first.values["StudyInstanceUID"]
    it.close()  # closes the cursor and gives the connection back
    # the connection is usable afterwards (no open server-side cursor left behind)
    with archive.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM study")).scalar_one() == 34
    assert len(list(eng.run(Query(Level.STUDY, [match_for("PatientName", "STREAM*")])))) == 30


def test_patient_level_age_from_latest_study(archive) -> None:
    for date, age in (("20200101", "040Y"), ("20240101", "044Y")):
        ds = make_ct(patient_id="AGE1", patient_name="Aged^Pat")
        ds.StudyDate, ds.PatientAge, ds.PatientWeight = date, age, "70"
        _store(archive, ds)
    rows = _run(archive, Level.PATIENT, Model.PATIENT_ROOT, PatientID="AGE1", PatientAge="")
    assert rows == [{"PatientID": "AGE1", "PatientAge": "044Y"}]


def test_migration_0002_backfills_the_name_search_column(archive) -> None:
    from alembic import command

    from pacsbox.archive.index.db import alembic_config

    _store(archive, make_ct(patient_id="OLD1", patient_name="Ångström^Anders"))

    def alembic(action: str, revision: str) -> None:
        with archive.engine.begin() as conn:
            cfg = alembic_config(archive.engine)
            cfg.attributes["connection"] = conn
            getattr(command, action)(cfg, revision)

    alembic("downgrade", "0001")
    alembic("upgrade", "head")
    with archive.engine.connect() as conn:
        value = conn.execute(
            text("SELECT patient_name_search FROM patient WHERE patient_id = 'OLD1'")
        ).scalar_one()
    assert value == "ÅNGSTRÖM^ANDERS"
    assert _studies(_run(archive, PatientName="ångström*")) != set()


def test_count_equals_the_rows_run_yields(archive) -> None:
    """QueryEngine.count (QIDO-RS X-Total-Count) agrees with run() — including the fast path
    for a lone "has a descendant matching" condition (distinct parent keys of the lower level,
    e.g. STUDY1 has two CT instances in one series and an MR series: counted once)."""
    _populate(archive)
    engine = QueryEngine(archive.engine)
    cases = [
        (Level.STUDY, {"ModalitiesInStudy": "MR"}),  # lone semi-join: fast path
        (Level.STUDY, {"ModalitiesInStudy": "CT\\US"}),
        (Level.STUDY, {"Modality": "CT"}),  # relational, lone semi-join: fast path
        (Level.STUDY, {"SOPInstanceUID": "*"}),  # relational on IMAGE level
        (Level.PATIENT, {"Modality": "MR"}),  # patient level, relational
        (Level.STUDY, {"ModalitiesInStudy": "MR", "PatientName": "smith*"}),  # mixed: general
        (Level.STUDY, {"ModalitiesInStudy": "MR", "Modality": "MR"}),  # two semi-joins
        (Level.STUDY, {"ModalitiesInStudy": "XA"}),  # nothing
        (Level.STUDY, {}),
        (Level.SERIES, {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"}),
    ]
    for level, keys in cases:
        query = Query(level, [match_for(k, v) for k, v in keys.items()], model=Model.PATIENT_ROOT)
        rows = engine.run(query)
        try:
            expected = sum(1 for _ in rows)
        finally:
            rows.close()  # type: ignore[attr-defined]
        assert engine.count(query) == expected, (level, keys)
    assert engine.count(Query(Level.STUDY, [match_for("ModalitiesInStudy", "MR")])) == 2
