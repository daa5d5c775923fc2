"""Worklist devices, queries and identifiers (sendtopacs/worklist.py) without a peer; the
searches themselves run against real peers in tests/interop/test_sendtopacs_worklist.py."""

from __future__ import annotations

import datetime as dt

import pytest

from pacsbox.sendtopacs.worklist import (
    WorklistConfigError,
    WorklistDevice,
    WorklistQuery,
    date_range,
    dotted,
    http_url,
    mwl_identifier,
    qr_identifier,
)


def test_date_range() -> None:
    today = dt.date(2026, 12, 1)
    assert date_range("today", today) == "20261201"
    assert date_range("TODAY", today) == "20261201"
    assert date_range("2026-01-31") == "20260131"
    assert date_range("20260101-20260131") == "20260101-20260131"
    assert date_range("-20260131") == "-20260131"
    assert date_range("20260101-") == "20260101-"
    assert date_range("") == ""
    for bad in ("20260132", "yesterday", "20260201-20260101", "-", "2026013"):
        with pytest.raises(WorklistConfigError, match="date"):
            date_range(bad)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"name": "bad name"}, "letters, digits"),
        ({"kind": "dimse"}, "kind must be one of"),
        ({"ae_title": ""}, "AE title"),
        ({"ae_title": "A\\B"}, "AE title"),
        ({"host": ""}, "host"),
        ({"port": 0}, "port"),
        ({"kind": "qr", "root_model": "SERIES"}, "root model"),
        ({"kind": "qr", "root_model": "STUDY", "level": "PATIENT"}, "no PATIENT level"),
        ({"kind": "qr", "level": "IMAGE"}, "level must be"),
        ({"kind": "http", "url": "ftp://x/{patient_id}", "mapping": {"patient_id": "a"}}, "http"),
        ({"kind": "http", "url": "http://x/{pid}", "mapping": {"patient_id": "a"}}, "placeholder"),
        ({"kind": "http", "url": "http://x/", "mapping": {}}, "needs a mapping"),
        ({"kind": "http", "url": "http://x/", "mapping": {"colour": "a"}}, "mapping key"),
        (
            {
                "kind": "http",
                "url": "http://x/",
                "mapping": {"patient_id": "a"},
                "auth_header": "x",
            },
            "auth_header",
        ),
        ({"modality": "xc"}, "modality"),
        ({"date": "tomorrow"}, "date"),
        ({"timeout": 0}, "timeout"),
        ({"max_results": 0}, "max_results"),
    ],
)
def test_device_validation(kw: dict[str, object], message: str) -> None:
    values: dict[str, object] = {
        "name": "wl",
        "kind": "mwl",
        "ae_title": "WL",
        "host": "127.0.0.1",
        "port": 104,
    }
    values.update(kw)
    with pytest.raises(WorklistConfigError, match=message):
        WorklistDevice(**values).validate()  # type: ignore[arg-type]


def test_device_from_settings_ignores_unknown_keys_and_maps_worklist_root() -> None:
    dev = WorklistDevice.from_dict(
        {"name": "x", "kind": "qr", "root_model": "WORKLIST", "ae_title": "A", "host": "h",
         "port": 1, "from_a_newer_version": True}
    )  # fmt: skip
    assert dev.validate().kind == "mwl" and dev.root_model == "WORKLIST"
    with pytest.raises(WorklistConfigError):
        WorklistDevice.from_dict(["not", "an", "object"])  # type: ignore[arg-type]


def test_query_defaults_and_star() -> None:
    dev = WorklistDevice("wl", "mwl", "WL", "h", 1, modality="XC", station_ae="CAM", date="today")
    q = WorklistQuery(patient_name="Doe*").with_defaults(dev)
    assert (q.modality, q.station_ae, q.date, q.patient_name) == ("XC", "CAM", "today", "Doe*")
    q = WorklistQuery(modality="*", date="*", station_ae="ES1").with_defaults(dev)
    assert (q.modality, q.station_ae, q.date) == ("", "ES1", "")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"station_ae": "x" * 17}, "longer than 16"),
        ({"patient_id": "a\\b"}, "not allowed"),
        ({"patient_name": "Doe\x00"}, "not allowed"),
        ({"accession_number": "1" * 17}, "longer than 16"),
        ({"modality": "xc"}, "upper-case"),
        ({"study_instance_uid": "1.2.x"}, "a UID"),
        ({"date": "20261301"}, "date"),
    ],
)
def test_query_validation(kw: dict[str, str], message: str) -> None:
    with pytest.raises(WorklistConfigError, match=message):
        WorklistQuery(**kw).validate()


def test_mwl_identifier() -> None:
    dev = WorklistDevice("wl", "mwl", "WL", "h", 1)
    q = WorklistQuery(patient_name="Müller*", modality="XC", station_ae="CAM", date="20260101-")
    ds = mwl_identifier(q, dev)
    assert ds.SpecificCharacterSet == "ISO_IR 192"  # a non-ASCII key
    sps = ds.ScheduledProcedureStepSequence[0]
    assert (sps.Modality, sps.ScheduledStationAETitle, sps.ScheduledProcedureStepStartDate) == (
        "XC",
        "CAM",
        "20260101-",
    )
    assert ds.PatientName == "Müller*"
    for kw in ("StudyInstanceUID", "AccessionNumber", "RequestedProcedureDescription"):
        assert kw in ds and ds[kw].value in ("", None)  # return keys (universal matching)
    assert "SpecificCharacterSet" not in mwl_identifier(WorklistQuery(patient_id="P1"), dev)


def test_qr_identifier_levels() -> None:
    dev = WorklistDevice("qr", "qr", "Q", "h", 1, character_set="ISO_IR 100")
    pat = qr_identifier(WorklistQuery(patient_id="P*"), dev, "PATIENT")
    assert pat.QueryRetrieveLevel == "PATIENT" and "StudyInstanceUID" not in pat
    assert pat.SpecificCharacterSet == "ISO_IR 100"
    st = qr_identifier(WorklistQuery(date="20260101", accession_number="A1"), dev, "STUDY")
    assert (st.QueryRetrieveLevel, st.StudyDate, st.AccessionNumber) == ("STUDY", "20260101", "A1")
    assert "ModalitiesInStudy" in st


def test_dotted_and_http_url() -> None:
    data = {"a": {"b": [{"c": 1}, {"c": 2}]}, "n": None}
    assert dotted(data, "a.b.1.c") == 2
    assert dotted(data, "a.b.-1.c") == 2
    assert dotted(data, "a.b.5.c") is None
    assert dotted(data, "a.x.c") is None
    assert dotted(data, "n.x") is None
    assert dotted(data, "") == data
    dev = WorklistDevice(
        "his",
        "http",
        url="https://his/api?pid={patient_id}&name={patient_name}&d={date}",
        mapping={"patient_id": "id"},
    ).validate()
    url = http_url(dev, WorklistQuery(patient_id="a&b=c", patient_name="Doe^J*", date="20260101"))
    assert url == "https://his/api?pid=a%26b%3Dc&name=Doe%5EJ%2A&d=20260101"


def test_settings_file_worklist_keys(tmp_path) -> None:  # noqa: ANN001 - pytest tmp_path
    import json

    from pacsbox.sendtopacs.settings import SettingsError, load

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"ae_title": "CAM1", "devices": []}))
    s = load(old)  # a file written before the worklist keys existed
    assert s.worklist_devices == [] and s.filename_pattern == "" and s.dicom_mode == "as-is"

    s.add_worklist_device(WorklistDevice("ris", "mwl", "RIS", "10.0.0.7", 104, date="today"))
    s.add_worklist_device(
        WorklistDevice(
            "his", "http", url="https://his/api?pid={patient_id}", mapping={"patient_id": "id"}
        )
    )
    s.filename_pattern = "{PatientID}_*"
    s.tag_updates = [{"tag": "Modality", "value": "XC", "if_empty": True}]
    s.save(tmp_path / "new.json")
    again = load(tmp_path / "new.json")
    assert [(w.name, w.kind, w.default) for w in again.worklist_devices] == [
        ("ris", "mwl", True),
        ("his", "http", False),
    ]
    assert again.worklist_device().name == "ris" and again.worklist_device("HIS").kind == "http"
    assert again.tag_updates == s.tag_updates and again.filename_pattern == "{PatientID}_*"

    for key, value, message in (
        ("worklist_devices", [{"name": "x", "kind": "mwl", "port": 0}], "AE title"),
        ("filename_pattern", "{Nope}", "unknown field"),
        ("tag_updates", [{"tag": "PixelData", "value": "x"}], "cannot be updated"),
        ("dicom_mode", "sometimes", "as-is or worklist"),
    ):
        bad = tmp_path / f"bad_{key}.json"
        bad.write_text(json.dumps({key: value}))
        with pytest.raises(SettingsError, match=message):
            load(bad)
