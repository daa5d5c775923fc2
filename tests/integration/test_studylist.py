"""The study list (SPEC E4) on SQLite, PostgreSQL and MariaDB: every key and operator, OR of
repeated keys, ranges, relative dates on a fixed clock, sorting, paging, the total, hostile
values, and the ``GET /api/studylist`` route (400s, header, audit, privileges)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from pacsbox.archive import studylist
from pacsbox.archive.index.writer import STUDY
from pacsbox.archive.studylist import StudyList, parse
from pacsbox.archive.users import UserDirectory
from pacsbox.web.app import create_app
from tests.helpers import make_ct

TODAY = date(2026, 6, 15)


@dataclass
class Spec:
    label: str  # the accession number
    pid: str
    name: str
    sex: str
    birth: str
    day: str
    time: str
    desc: str
    source: str = "CTSCAN"
    institution: str = ""
    referring: str = ""
    comments: str = ""
    series: list[tuple[str, int, str, str]] = field(default_factory=list)  # mod, no, body, desc


SPECS = [
    Spec(
        "ACC1", "P1", "Doe^John", "M", "19700101", "20260615", "101010", "CT HEAD",
        institution="General Hospital", referring="House^Gregory",
        comments="allergic to contrast",
        series=[("CT", 1, "HEAD", "axial"), ("SR", 2, "", "report")],
    ),
    Spec(
        "ACC2", "P2", "Smith^Anna", "F", "19850505", "20260614", "083000", "MR KNEE",
        source="MRSCAN", series=[("MR", 1, "KNEE", "sag t1"), ("MR", 5, "KNEE", "cor pd")],
    ),
    Spec(
        "A%_B", "P3", "O'Brien^Pat", "O", "19900101", "20260610", "235959", "CR CHEST",
        series=[("CR", 1, "CHEST", "pa")],
    ),
    Spec(
        "ACC4", "P4", "smith^bob", "M", "19600101", "20260520", "120000", "CT ABDOMEN",
        series=[("CT", 3, "ABDOMEN", "venous")],
    ),
    Spec(
        "ACC5", "P5", "Zed^Zoe", "F", "20000101", "20131125", "000000", "US",
        series=[("US", 1, "", "")],
    ),
    Spec(
        "ACC6", "P1", "Doe^John", "M", "19700101", "20160831", "101011", "MR BRAIN",
        series=[("MR", 2, "HEAD", "t2")],
    ),
]  # fmt: skip


@dataclass
class Corpus:
    uids: dict[str, dict[str, Any]]  # label -> {"study", "series": [...], "sops": [...]}


def build(archive: Any, folder: Path) -> Corpus:
    folder.mkdir(parents=True, exist_ok=True)
    uids: dict[str, dict[str, Any]] = {}
    for spec in SPECS:
        study = generate_uid()
        info: dict[str, Any] = {"study": study, "series": [], "sops": []}
        for modality, number, body, sdesc in spec.series:
            series = generate_uid()
            ds = make_ct(study, series, patient_id=spec.pid, patient_name=spec.name)
            ds.Modality = modality
            ds.SeriesNumber = number
            ds.PatientSex = spec.sex
            ds.PatientBirthDate = spec.birth
            ds.StudyDate = ds.SeriesDate = spec.day
            ds.StudyTime = ds.SeriesTime = spec.time
            ds.AccessionNumber = spec.label
            ds.StudyDescription = spec.desc
            ds.SeriesDescription = sdesc
            ds.StudyID = spec.label[-1]
            if body:
                ds.BodyPartExamined = body
            if spec.institution:
                ds.InstitutionName = spec.institution
            ds.ReferringPhysicianName = spec.referring
            if spec.comments:
                ds.PatientComments = spec.comments
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            archive.ingest.store_file(path, source_ae=spec.source)
            info["series"].append(series)
            info["sops"].append(ds.SOPInstanceUID)
        uids[spec.label] = info
    return Corpus(uids)


@pytest.fixture
def corpus(archive: Any, tmp_path: Path) -> Corpus:  # all three databases
    return build(archive, tmp_path / "in")


def found(archive: Any, params: list[tuple[str, str]], *, fold: bool = True) -> set[str]:
    page = StudyList(archive.engine, pn_case_insensitive=fold).search(
        parse(params, today=TODAY), limit=500
    )
    labels = {item["accession_number"] for item in page.items}
    assert page.total == len(labels)
    return labels


ALL = {s.label for s in SPECS}
CASES: list[tuple[str, set[str]]] = [
    ("", ALL),
    ("patientid=P1", {"ACC1", "ACC6"}),
    ("patientid=P1&patientid=P3", {"ACC1", "A%_B", "ACC6"}),
    ("patientid==P4", {"ACC4"}),
    ("patientid===P4", {"ACC4"}),
    ("patientname=smith*", {"ACC2", "ACC4"}),
    ("patientname=SMITH^ANNA", {"ACC2"}),
    ("patientname==doe^john", {"ACC1", "ACC6"}),
    ("patientname=**ith", {"ACC2", "ACC4"}),
    ("patientname=!=doe^john", ALL - {"ACC1", "ACC6"}),
    ("patientname=o'brien*", {"A%_B"}),
    ("PatientSex=m", {"ACC1", "ACC4", "ACC6"}),
    ("patientsex=!=m", {"ACC2", "A%_B", "ACC5"}),
    ("patientbirthdate=1985/05/05", {"ACC2"}),
    ("patientbirthdate=>>19850505", {"A%_B", "ACC5"}),
    ("patientbirthdate=>=19850505", {"ACC2", "A%_B", "ACC5"}),
    ("patientbirthdate=<<1970-01-01", {"ACC4"}),
    ("patientbirthdate=<=1970-01-01", {"ACC1", "ACC4", "ACC6"}),
    ("studydate=2026/06/15", {"ACC1"}),
    ("studydate=20260615", {"ACC1"}),
    ("studydate=!=2026/06/15", ALL - {"ACC1"}),
    ("studydate=~2013/11/25~2016/08/31", {"ACC5", "ACC6"}),
    ("studydate==~2013/11/25~2016/08/31", {"ACC5", "ACC6"}),
    ("studydate=~2026/06/01~", {"ACC1", "ACC2", "A%_B"}),
    ("studydate=~~2016/08/31", {"ACC5", "ACC6"}),
    ("studydate=>>2026/06/14", {"ACC1"}),
    ("studydate=>=2026/06/14", {"ACC1", "ACC2"}),
    ("studydate=<<2016/08/31", {"ACC5"}),
    ("studydate=<=2016/08/31", {"ACC5", "ACC6"}),
    ("studydate=today", {"ACC1"}),
    ("studydate=yesterday", {"ACC2"}),
    ("studydate=pastweek", {"ACC1", "ACC2", "A%_B"}),
    ("studydate=pastmonth", {"ACC1", "ACC2", "A%_B", "ACC4"}),
    ("studydate=today&studydate=2013/11/25", {"ACC1", "ACC5"}),
    ("studytime=10:10:10", {"ACC1"}),
    ("studytime=10:10", {"ACC1", "ACC6"}),
    ("studytime=>>12:00", {"A%_B"}),
    ("studytime=>=12:00", {"A%_B", "ACC4"}),
    ("studytime=<<08:30:01", {"ACC2", "ACC5"}),
    ("studytime=<=08:30", {"ACC2", "ACC5"}),
    ("studytime=~10:00~12:00", {"ACC1", "ACC6", "ACC4"}),
    ("accessionnumber=ACC2", {"ACC2"}),
    ("accessionnumber=A%_B", {"A%_B"}),
    ("accessionnumber=A%*", {"A%_B"}),
    ("accessionnumber=ACC?", ALL - {"A%_B"}),
    ("accessionnumber=!=ACC1", ALL - {"ACC1"}),
    ("accessionnumber=**%", {"A%_B"}),
    ("accessionnumber=**_", {"A%_B"}),
    ("accessionnumber=>>ACC4", {"ACC5", "ACC6"}),
    ("studydescription=**head", {"ACC1"}),
    ("studydescription=ct*", {"ACC1", "ACC4"}),
    ("studydescription=ct head", {"ACC1"}),
    ("studyid=1", {"ACC1"}),
    ("studyid=1&studyid=2", {"ACC1", "ACC2"}),
    ("modality=ct", {"ACC1", "ACC4"}),
    ("modality=ct&modality=mr", {"ACC1", "ACC2", "ACC4", "ACC6"}),
    ("modality=!=ct", {"ACC2", "A%_B", "ACC5", "ACC6"}),
    ("modality=!=ct&modality=sr", ALL - {"ACC4"}),
    ("modality=sr", {"ACC1"}),
    ("modality=c*", {"ACC1", "A%_B", "ACC4"}),
    ("modality=ct&bodypartexamined=head", {"ACC1"}),  # the same series
    ("modality=sr&bodypartexamined=head", set()),  # the SR series has no body part
    ("bodypartexamined=knee", {"ACC2"}),
    ("bodypartexamined=**e", {"ACC1", "ACC2", "A%_B", "ACC4", "ACC6"}),
    ("seriesnumber=5", {"ACC2"}),
    ("seriesnumber=~2~3", {"ACC1", "ACC4", "ACC6"}),
    ("seriesnumber=>>4", {"ACC2"}),
    ("seriesnumber=<=1", {"ACC1", "ACC2", "A%_B", "ACC5"}),
    ("seriesnumber=!=1", {"ACC4", "ACC6"}),
    ("seriesdescription=**t1", {"ACC2"}),
    ("seriesdescription=AXIAL", {"ACC1"}),
    ("seriesdate=2026/06/14", {"ACC2"}),
    ("seriesdate=pastweek", {"ACC1", "ACC2", "A%_B"}),
    ("seriestime=23:59:59", {"A%_B"}),
    ("patientcomments=**contrast", {"ACC1"}),
    ("patientcomments=ALLERGIC*", {"ACC1"}),
    ("sourceae=MRSCAN", {"ACC2"}),
    ("sourceae=!=MRSCAN", ALL - {"ACC2"}),
    ("institutionname=**general", {"ACC1"}),
    ("referringphysicianname=house*", {"ACC1"}),
    ("receiveddate=<<2000/01/01", set()),
    ("patientid=P1&modality=mr", {"ACC6"}),
    ("patientid=P1&modality=mr&studydate=pastweek", set()),
    # hostile values are just values
    ("patientname=' OR 1=1 --", set()),
    ("studydescription=**'; DROP TABLE study; --", set()),
    ("patientid=\\", set()),
    ('patientid=") OR ("1"="1', set()),
    ("accessionnumber=[A]*", set()),
]


def _params(query: str) -> list[tuple[str, str]]:
    out = []
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            out.append((name, value))
    return out


@pytest.mark.parametrize("strategy", ["ids-first", "count-and-walk"])
def test_every_key_and_operator(
    archive: Any, corpus: Corpus, strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All CASES on each database (one corpus per database), both ways a page is read:
    the few matches found first (IN semi-joins), or count(*) + a walk in sort order
    (EXISTS probes), which large results take."""
    if strategy == "count-and-walk":
        monkeypatch.setattr(studylist, "DRIVE_FROM_MATCHES", 0)
    failures = []
    for query, expected in CASES:
        got = found(archive, _params(query))
        if got != expected:
            failures.append(f"{query}: expected {sorted(expected)}, got {sorted(got)}")
    assert not failures, "\n".join(failures)
    with archive.engine.connect() as conn:  # the DROP TABLE value was only a value
        assert conn.execute(select(func.count()).select_from(STUDY)).scalar_one() == 6


def test_uid_keys_and_received_date(archive: Any, corpus: Corpus) -> None:
    u = corpus.uids
    assert found(archive, [("studyinstanceuid", u["A%_B"]["study"])]) == {"A%_B"}
    assert found(archive, [("seriesinstanceuid", u["ACC2"]["series"][1])]) == {"ACC2"}
    assert found(archive, [("sopinstanceuid", u["ACC4"]["sops"][0])]) == {"ACC4"}
    assert found(
        archive,
        [("sopinstanceuid", u["ACC4"]["sops"][0]), ("sopinstanceuid", u["ACC5"]["sops"][0])],
    ) == {"ACC4", "ACC5"}
    # received today (the real clock: the index stores the arrival time)
    page = StudyList(archive.engine).search(parse([("receiveddate", "today")]), limit=50)
    assert page.total == 6
    today = date.today().strftime("%Y/%m/%d")
    page = StudyList(archive.engine).search(parse([("receiveddate", "!=" + today)]), limit=50)
    assert page.total == 0
    page = StudyList(archive.engine).search(parse([("receiveddate", ">=" + today)]), limit=50)
    assert page.total == 6


def test_case_sensitive_names_follow_the_setting(archive: Any, corpus: Corpus) -> None:
    assert found(archive, [("patientname", "smith*")], fold=False) == {"ACC4"}
    assert found(archive, [("patientname", "Smith*")], fold=False) == {"ACC2"}
    assert found(archive, [("referringphysicianname", "house*")], fold=False) == set()


def test_sort_paging_and_total(archive: Any, corpus: Corpus) -> None:
    sl = StudyList(archive.engine)

    def order(sort: str, limit: int = 50, offset: int = 0, **kw: str) -> tuple[int, list[str]]:
        page = sl.search(
            parse([("sort", sort), *kw.items()], today=TODAY), limit=limit, offset=offset
        )
        return page.total, [i["accession_number"] for i in page.items]

    newest = ["ACC1", "ACC2", "A%_B", "ACC4", "ACC6", "ACC5"]
    assert order("") == (6, newest)
    assert order("-studydate") == (6, newest)
    assert order("studydate") == (6, newest[::-1])
    assert order("", limit=2) == (6, newest[:2])
    assert order("", limit=2, offset=2) == (6, newest[2:4])
    assert order("", limit=2, offset=6) == (6, [])
    total, names = order("patientname,-studydate")
    assert total == 6 and names == ["ACC1", "ACC6", "A%_B", "ACC2", "ACC4", "ACC5"]
    # equal keys: the study id breaks ties the same way on every page
    total, by_sex = order("patientsex")
    assert by_sex == ["ACC2", "ACC5", "ACC1", "ACC4", "ACC6", "A%_B"]  # F, M, O; then id
    paged = [order("patientsex", limit=1, offset=i)[1][0] for i in range(6)]
    assert paged == by_sex
    total, by_series = order("-numseries,accessionnumber")
    assert by_series[:2] == ["ACC1", "ACC2"]
    assert order("", limit=1, modality="mr") == (2, ["ACC2"])

    item = sl.search(parse([("accessionnumber", "ACC1")]), limit=5).items[0]
    assert item["patient_name"] == "Doe^John" and item["patient_id"] == "P1"
    assert item["modalities_in_study"] == ["CT", "SR"]
    assert (item["num_series"], item["num_instances"]) == (2, 2)
    assert item["source_ae"] == "CTSCAN" and item["received_at"].endswith("Z")
    assert item["institution_name"] == "General Hospital"
    assert item["referring_physician_name"] == "House^Gregory"
    assert (item["study_date"], item["study_time"]) == ("20260615", "101010")


# -- the route ------------------------------------------------------------------------------
ADMIN = ("boss", "admin-pass-1")
VIEWER = ("vera", "viewer-pass-1")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def client(sqlite_archive: Any, tmp_path: Path) -> Iterator[TestClient]:
    users = UserDirectory(sqlite_archive.engine)
    users.add(ADMIN[0], "admin", ADMIN[1])
    users.add(VIEWER[0], "viewer", VIEWER[1])
    build(sqlite_archive, tmp_path / "in")
    with TestClient(create_app(sqlite_archive)) as c:
        yield c


def test_route(client: TestClient) -> None:
    h = basic(*VIEWER)
    r = client.get("/api/studylist?modality=ct&modality=mr&sort=-studydate&limit=3", headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == 4 and len(body["items"]) == 3
    assert float(r.headers["X-Server-Time-Ms"]) >= 0
    r = client.get("/api/studylist?PatientName=%3D**ith", headers=h)  # patientname==**ith
    assert r.status_code == 200 and r.json()["total"] == 0  # "=**ith" is equal to "**ith"
    r = client.get("/api/studylist?PatientName=**ith", headers=h)
    assert r.json()["total"] == 2
    # studydate=~2013/11/25~2016/08/31 as a HIS would put it in a link
    r = client.get("/api/studylist?studydate=~2013/11/25~2016/08/31", headers=h)
    assert r.json()["total"] == 2


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("foo=1", "unknown search key 'foo'"),
        ("studydate=31/12/2020", "is not a date"),
        ("modality=%3Ect", "unknown operator"),
        ("sort=password", "cannot sort by"),
        ("limit=501", "limit"),
        ("limit=0", "limit"),
        ("offset=-1", "offset"),
    ],
)
def test_route_errors(client: TestClient, query: str, message: str) -> None:
    r = client.get(f"/api/studylist?{query}", headers=basic(*VIEWER))
    assert r.status_code == 400
    assert message in r.json()["error"]["message"]


def test_route_needs_login_and_is_audited(client: TestClient) -> None:
    assert client.get("/api/studylist").status_code == 401
    r = client.get("/api/studylist?patientid=P1", headers=basic(*VIEWER))
    assert r.json()["total"] == 2
    audit = client.get("/api/audit?limit=5", headers=basic(*ADMIN)).json()
    events = audit["events"] if isinstance(audit, dict) else audit
    mine = [e for e in events if e["username"] == VIEWER[0] and e["action"] == "read"]
    assert mine and "study list" in mine[0]["detail"] and "patientid=P1" in mine[0]["detail"]
