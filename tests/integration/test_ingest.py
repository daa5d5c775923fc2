"""archive.ingest against SQLite, PostgreSQL and MariaDB: store, index, policies, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from pacsbox.app import build_archive
from pacsbox.archive.index.writer import counts
from pacsbox.archive.ingest import (
    CannotUnderstand,
    DataSetMismatch,
    DuplicateRejected,
    Ingest,
    PatientIDConflict,
)
from tests.helpers import dataset_bytes, make_ct


def encode(ds) -> bytes:
    """The data set as it travels in a C-STORE in Explicit VR Little Endian."""
    from pydicom.filebase import DicomBytesIO

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def test_store_and_index(archive):
    ds = make_ct(patient_name="Müller^Jürgen")
    data = encode(ds)
    stored = archive.ingest.store_dataset(
        data,
        "1.2.840.10008.1.2.1",
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        source_ae="MODALITY",
    )
    assert stored.outcome == "stored" and stored.new_study and stored.new_series
    path = archive.store.path(stored.key)
    assert path.is_file()
    # Part-10 with our meta, the data set byte-identical to what was received
    assert path.read_bytes()[128:132] == b"DICM"
    assert dataset_bytes(path) == data
    assert counts(archive.engine) == {"patients": 1, "studies": 1, "series": 1, "instances": 1}
    with archive.engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT p.patient_name, s.num_instances, s.modalities_in_study, i.attributes "
            "FROM instance i JOIN series se ON se.id = i.series_fk "
            "JOIN study s ON s.id = se.study_fk JOIN patient p ON p.id = s.patient_fk"
        ).one()
    assert row[0] == "Müller^Jürgen"
    assert row[1] == 1 and row[2] == "CT"
    model = json.loads(row[3])
    assert model["00100010"]["Value"][0]["Alphabetic"] == "Müller^Jürgen"
    assert "7FE00010" not in model


def test_counters_and_modalities(archive):
    study = generate_uid()
    for modality in ("CT", "MR", "CT"):
        series = generate_uid()
        for i in range(3):
            ds = make_ct(study, series, instance_number=i, modality=modality)
            archive.ingest.store_dataset(encode(ds), "1.2.840.10008.1.2.1")
    with archive.engine.connect() as conn:
        n_series, n_inst, mods = conn.exec_driver_sql(
            "SELECT num_series, num_instances, modalities_in_study FROM study"
        ).one()
        p = conn.exec_driver_sql("SELECT num_studies, num_series, num_instances FROM patient").one()
    assert (n_series, n_inst, mods) == (3, 9, "CT\\MR")
    assert tuple(p) == (1, 3, 9)


@pytest.mark.parametrize("policy", ["replace", "keep", "reject"])
def test_duplicate_policy(archive, policy):
    archive.ingest.duplicate_policy = policy
    ds = make_ct()
    first = encode(ds)
    archive.ingest.store_dataset(first, "1.2.840.10008.1.2.1")
    ds.PatientName = "Changed^Name"
    second = encode(ds)
    if policy == "reject":
        with pytest.raises(DuplicateRejected) as exc:
            archive.ingest.store_dataset(second, "1.2.840.10008.1.2.1")
        assert exc.value.status == 0x0111
        expected = first
    else:
        result = archive.ingest.store_dataset(second, "1.2.840.10008.1.2.1")
        assert result.outcome == ("replaced" if policy == "replace" else "kept")
        expected = second if policy == "replace" else first
    key = archive.store.key_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert dataset_bytes(archive.store.path(key)) == expected
    assert counts(archive.engine)["instances"] == 1
    with archive.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT num_instances FROM series").scalar_one() == 1


def test_patient_id_conflict(archive):
    study = generate_uid()
    archive.ingest.store_dataset(encode(make_ct(study, patient_id="A")), "1.2.840.10008.1.2.1")
    other = make_ct(study, patient_id="B")
    archive.ingest.patient_id_conflict = "reject"
    with pytest.raises(PatientIDConflict) as exc:
        archive.ingest.store_dataset(encode(other), "1.2.840.10008.1.2.1")
    assert exc.value.status == 0xA703
    archive.ingest.patient_id_conflict = "accept"
    assert archive.ingest.store_dataset(encode(other), "1.2.840.10008.1.2.1").outcome == "stored"


def test_refusals(archive):
    ds = make_ct()
    data = encode(ds)
    with pytest.raises(DataSetMismatch) as exc:
        archive.ingest.store_dataset(data, "1.2.840.10008.1.2.1", sop_instance_uid="1.2.3")
    assert exc.value.status == 0xA900
    with pytest.raises(DataSetMismatch):
        archive.ingest.store_dataset(data, "1.2.840.10008.1.2.1", sop_class_uid="1.2.3")
    bad = make_ct(sop_uid="../../x")
    with pytest.raises(CannotUnderstand):
        archive.ingest.store_dataset(encode(bad), "1.2.840.10008.1.2.1")
    with pytest.raises(CannotUnderstand):
        archive.ingest.store_dataset(
            b"\x08\x00\x16\x00UI\xff\xff" + b"garbage", "1.2.840.10008.1.2.1"
        )
    missing = make_ct()
    del missing.StudyInstanceUID
    with pytest.raises(DataSetMismatch):
        archive.ingest.store_dataset(encode(missing), "1.2.840.10008.1.2.1")
    assert counts(archive.engine)["instances"] == 0
    assert list(archive.store.iter_keys()) == []


def test_native_format_and_mirror(tmp_path: Path, settings):
    settings.storage_format = "native"
    settings.backup_dir = tmp_path / "backup"
    arch = build_archive(settings)
    try:
        ds = make_ct()
        data = encode(ds)
        stored = arch.ingest.store_dataset(data, "1.2.840.10008.1.2.1")
        assert arch.store.path(stored.key).read_bytes() == data
        assert (tmp_path / "backup" / stored.key).read_bytes() == data
    finally:
        arch.engine.dispose()


def test_store_file_copy_and_link(archive, tmp_path: Path):
    ds = make_ct()
    src = tmp_path / "in.dcm"
    ds.save_as(src, enforce_file_format=True)
    copied = archive.ingest.store_file(src)
    assert dataset_bytes(archive.store.path(copied.key)) == dataset_bytes(src)
    ds2 = make_ct()
    src2 = tmp_path / "linked.dcm"
    ds2.save_as(src2, enforce_file_format=True)
    linked = archive.ingest.store_file(src2, link=True)
    assert linked.key == str(src2.resolve())
    assert Ingest is not None
