"""File-name patterns and automatic worklist mapping (SPEC S2, sendtopacs/naming.py).

The mapping runs against a real HTTP JSON worklist (:class:`JsonWorklist`, a small threaded
HTTP server on 127.0.0.1 that filters its records by the query string; also used by the
interop tests)."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pacsbox.sendtopacs.naming import (
    FilenamePattern,
    PatternError,
    auto_map,
    canonical_field,
    fields_from_dicom,
    query_for,
)
from pacsbox.sendtopacs.worklist import WorklistDevice
from tests.helpers import make_ct

RECORDS: list[dict[str, Any]] = [
    {
        "pid": "WL001",
        "name": {"family": "Muster", "given": "Anna"},
        "dob": "1980-01-01",
        "sex": "F",
        "order": {"accession": "ACC100", "text": "Skin photo", "modality": "XC"},
    },
    {
        "pid": "WL002",
        "name": {"family": "Muster", "given": "Bernd"},
        "dob": "1975-05-05",
        "sex": "M",
        "order": {"accession": "ACC200", "text": "Wound", "modality": "XC"},
    },
    {
        "pid": "WL003",
        "name": {"family": "Bad", "given": "Date"},
        "dob": "1975-13-45",
        "sex": "M",
        "order": {"accession": "ACC300", "text": "x", "modality": "XC"},
    },
]
MAPPING = {
    "patient_id": "pid",
    "last_name": "name.family",
    "first_name": "name.given",
    "birth_date": "dob",
    "sex": "sex",
    "accession_number": "order.accession",
    "study_description": "order.text",
    "modality": "order.modality",
}
TOKEN = "Bearer s3cret"


def _matches(value: str, pattern: str) -> bool:
    if not pattern:
        return True
    if pattern.endswith("*"):
        return value.lower().startswith(pattern[:-1].lower())
    return value.lower() == pattern.lower()


class JsonWorklist:
    """A tiny HTTP JSON worklist: GET /orders?pid=&name=&acc= → {"data": {"orders": [...]}}.
    ``name`` matches ``family^given`` (trailing ``*`` = prefix). Other paths: /broken (500),
    /html (not JSON), /slow (answers after 3 s). Requires the Authorization header."""

    def __init__(self, records: list[dict[str, Any]] | None = None) -> None:
        self.records = records if records is not None else RECORDS
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the time-out test)

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                owner.requests.append(self.path)
                url = urllib.parse.urlsplit(self.path)
                if self.headers.get("Authorization") != TOKEN:
                    self._send(401, b'{"error": "missing token"}')
                    return
                if url.path == "/broken":
                    self._send(500, b'{"error": "database down"}')
                    return
                if url.path == "/html":
                    self._send(200, b"<html>login</html>", "text/html")
                    return
                if url.path == "/deep":
                    self._send(200, b"[" * 100_000 + b"]" * 100_000)
                    return
                if url.path == "/huge":
                    self._send(200, b'{"data": {"orders": [' + b"0," * 9_000_000 + b"0]}}")
                    return
                if url.path == "/ftp":
                    self.send_response(302)
                    self.send_header("Location", "ftp://127.0.0.1/orders.json")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if url.path == "/moved":
                    self.send_response(301)
                    self.send_header("Location", "/orders?" + url.query)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if url.path == "/slow":
                    time.sleep(3)
                    self._send(200, b"[]")
                    return
                q = dict(urllib.parse.parse_qsl(url.query))
                out = [
                    r
                    for r in owner.records
                    if _matches(r["pid"], q.get("pid", ""))
                    and _matches(f"{r['name']['family']}^{r['name']['given']}", q.get("name", ""))
                    and _matches(r["order"]["accession"], q.get("acc", ""))
                ]
                self._send(200, json.dumps({"data": {"orders": out}}).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def device(self, path: str = "/orders", **kw: Any) -> WorklistDevice:
        values: dict[str, Any] = {
            "url": self.base + path + "?pid={patient_id}&name={patient_name}&acc={accession}",
            "auth_header": f"Authorization: {TOKEN}",
            "results_path": "data.orders",
            "mapping": dict(MAPPING),
            "timeout": 5,
        }
        values.update(kw)
        return WorklistDevice("his", "http", **values).validate()

    def __enter__(self) -> JsonWorklist:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def his() -> Iterator[JsonWorklist]:
    with JsonWorklist() as server:
        yield server


# -- patterns ----------------------------------------------------------------------------------
def test_name_pattern_fields() -> None:
    pat = FilenamePattern("{PatientID}_{LastName}_*.jpg")
    assert pat.match("WL001_Muster_2.jpg") == {"PatientID": "WL001", "LastName": "Muster"}
    assert pat.match("/some/folder/WL001_Muster_x_y.JPG") == {
        "PatientID": "WL001",
        "LastName": "Muster",
    }
    assert pat.match("WL001-Muster.jpg") is None
    assert pat.match("WL001_Muster_2.png") is None


def test_name_pattern_wildcards_and_field_at_end() -> None:
    pat = FilenamePattern("scan ?? {AccessionNumber}.{*}".replace("{*}", "*"))
    assert pat.match("scan 01 ACC7.pdf") == {"AccessionNumber": "ACC7"}
    pat = FilenamePattern("{patient_id}-{patient_name}")
    assert pat.match("123-Doe^John.png") == {"PatientID": "123", "PatientName": "Doe^John.png"}
    pat = FilenamePattern("{StudyDate}_{PatientID}*.tif")  # greedy before a wildcard
    assert pat.match("20260101_P9.tif") == {"StudyDate": "20260101", "PatientID": "P9"}


def test_regex_pattern() -> None:
    pat = FilenamePattern(r"re:(?P<PatientID>\d+)-(?P<patient_name>[^.]+)\.pdf")
    assert pat.match("0042-Doe^Jane.PDF") == {"PatientID": "0042", "PatientName": "Doe^Jane"}
    assert pat.match("x-Doe.pdf") is None


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "empty"),
        ("photo_*.jpg", "has no {Field}"),
        ("{Patient}_*.jpg", "unknown field"),
        ("{PatientID}_{PatientID}.jpg", "appears twice"),
        ("{PatientID_*.jpg", "unbalanced"),
        ("re:(?P<PatientID>[a-", "regex"),
        ("re:\\d+", "no named group"),
        ("re:(?P<Nope>\\d+)", "unknown field"),
    ],
)
def test_bad_patterns(pattern: str, message: str) -> None:
    with pytest.raises(PatternError, match=message):
        FilenamePattern(pattern)


def test_canonical_field() -> None:
    assert canonical_field("accession_number") == "AccessionNumber"
    assert canonical_field("STUDYINSTANCEUID") == "StudyInstanceUID"


def test_query_follows_the_device_flags() -> None:
    dev = WorklistDevice("wl", "mwl", "WL", "127.0.0.1", 104)
    fields = {"PatientID": "P1", "LastName": "Doe", "FirstName": "J", "Modality": "xc"}
    q = query_for(fields, dev)
    assert (q.patient_id, q.patient_name, q.modality) == ("P1", "Doe^J*", "XC")
    dev.patient_id_wildcard, dev.patient_name_wildcard = True, False
    q = query_for(fields, dev)
    assert (q.patient_id, q.patient_name) == ("P1*", "Doe^J")
    dev.fill_patient_id = dev.fill_patient_name = False
    q = query_for(fields, dev)
    assert (q.patient_id, q.patient_name) == ("", "")


def test_fields_from_dicom(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    make_ct(patient_id="WL002", patient_name="Muster^Bernd").save_as(path, enforce_file_format=True)
    assert fields_from_dicom(path) == {
        "PatientID": "WL002",
        "PatientName": "Muster^Bernd",
    }
    (tmp_path / "y.jpg").write_bytes(b"\xff\xd8\xff\xe0not dicom")
    assert fields_from_dicom(tmp_path / "y.jpg") is None


# -- auto_map against the HTTP JSON worklist -----------------------------------------------------
def _touch(folder: Path, *names: str) -> list[Path]:
    out = []
    for n in names:
        (folder / n).write_bytes(b"\xff\xd8\xff\xe0 photo")
        out.append(folder / n)
    return out


def test_auto_map_unique_several_none_unparsed(his: JsonWorklist, tmp_path: Path) -> None:
    files = _touch(
        tmp_path,
        "WL001_Muster_1.jpg",  # one match → mapped
        "WL001_Muster_2.jpg",  # the same search again (sent once)
        "_Muster_3.jpg",  # no patient id: name "Muster*" → two matches → choose
        "WL999_Nobody_1.jpg",  # no match → choose
        "holiday.jpg",  # does not fit the pattern → choose
        "WL003_Bad_1.jpg",  # one match with an invalid birth date → choose
    )
    pattern = "{PatientID}_{LastName}_*.jpg"
    res = auto_map(files, his.device(), "re:(?P<PatientID>[^_]*)_(?P<LastName>[^_]+)_.*\\.jpg")
    # the name-pattern form cannot express an empty PatientID: the regex above can
    assert [m.status for m in res] == ["mapped", "mapped", "choose", "choose", "choose", "choose"]
    first = res[0].entry
    assert first is not None
    p = first.patient
    assert (p.patient_id, p.patient_name, p.birth_date, p.sex) == (
        "WL001",
        "Muster^Anna",
        "19800101",
        "F",
    )
    assert (p.accession_number, p.study_description, first.modality) == (
        "ACC100",
        "Skin photo",
        "XC",
    )
    assert len(res[2].candidates) == 2 and "2 worklist entries" in res[2].message
    assert res[3].candidates == [] and "no worklist entry" in res[3].message
    assert "does not match the pattern" in res[4].message
    assert "birth date" in res[5].message
    orders = [r for r in his.requests if r.startswith("/orders")]
    assert len(orders) == 4, orders  # WL001 searched once for both files
    # the plain name pattern maps the unique file the same way
    again = auto_map(files[:1], his.device(), pattern)
    assert again[0].status == "mapped" and again[0].entry is not None
    assert again[0].entry.patient.patient_id == "WL001"
    assert again[0].as_dict()["entry"]["patient"]["patient_name"] == "Muster^Anna"


def test_auto_map_dicom_inputs_use_their_attributes(his: JsonWorklist, tmp_path: Path) -> None:
    path = tmp_path / "modality.dcm"
    make_ct(patient_id="WL002", patient_name="Muster^Bernd").save_as(path, enforce_file_format=True)
    dev = his.device()
    dev.fill_patient_name = False  # patient id alone
    (m,) = auto_map([path], dev, None)
    assert m.status == "mapped" and m.entry is not None
    assert m.entry.patient.accession_number == "ACC200"
    assert "DICOM attributes" in m.message


def test_auto_map_nothing_to_search_by(his: JsonWorklist, tmp_path: Path) -> None:
    dev = his.device()
    dev.fill_patient_id = dev.fill_patient_name = False
    (m,) = auto_map(_touch(tmp_path, "WL001_Muster_1.jpg"), dev, "{PatientID}_{LastName}_*")
    assert m.status == "choose" and "nothing to search by" in m.message
    assert his.requests == []


@pytest.mark.parametrize(
    ("path", "kw", "message"),
    [
        ("/broken", {}, 'HTTP 500 Internal Server Error: {"error": "database down"}'),
        ("/html", {}, "not JSON"),
        ("/slow", {"timeout": 0.5}, "no answer within 0.5 s"),
        ("/orders", {"auth_header": "Authorization: Bearer wrong"}, "HTTP 401"),
        ("/orders", {"results_path": "data.missing"}, "no list of records at 'data.missing'"),
        ("/deep", {}, "nested too deeply"),
        ("/huge", {}, "larger than 16 MiB"),
        ("/ftp", {}, "redirect to a non-HTTP URL refused"),
    ],
)
def test_auto_map_reports_search_errors(
    his: JsonWorklist, tmp_path: Path, path: str, kw: dict[str, Any], message: str
) -> None:
    (m,) = auto_map(_touch(tmp_path, "WL001_Muster_1.jpg"), his.device(path, **kw), "{PatientID}_*")
    assert m.status == "error"
    assert message in m.message


def test_auto_map_nothing_listening(tmp_path: Path) -> None:
    with JsonWorklist() as gone:
        dev = gone.device()
    (m,) = auto_map(_touch(tmp_path, "WL001_x.jpg"), dev, "{PatientID}_*")
    assert m.status == "error" and "connection refused" in m.message


def test_birth_date_field_is_parsed_but_not_searched() -> None:
    pat = FilenamePattern("{PatientID}_{BirthDate}_*")
    fields = pat.match("P1_19800101_x.jpg")
    assert fields == {"PatientID": "P1", "BirthDate": "19800101"}
    q = query_for(fields, WorklistDevice("wl", "mwl", "WL", "127.0.0.1", 104))
    assert (q.patient_id, q.patient_name, q.date) == ("P1", "", "")


def test_http_redirect_to_http_is_followed(his: JsonWorklist, tmp_path: Path) -> None:
    (m,) = auto_map(_touch(tmp_path, "WL001_Muster_1.jpg"), his.device("/moved"), "{PatientID}_*")
    assert m.status == "mapped", m.message


def test_http_result_limit(his: JsonWorklist) -> None:
    from pacsbox.sendtopacs.worklist import WorklistError, WorklistQuery, search

    with pytest.raises(WorklistError, match="more than 1 matches"):
        search(his.device(max_results=1), WorklistQuery(patient_name="Muster*"))
