"""Concurrent C-STOREs into the same studies must all be indexed (SPEC A7: no global ingest
lock; the index must cope with concurrent writers on every supported database).

Two archives on the same data folder and database stand for two worker processes; each runs
several threads (associations) storing instances of the same two studies, new series starting
while other writers update the same study and patient rows. No store may fail — a deadlock or
serialization failure between index transactions is the archive's problem to retry, not a
refusal (A701) to send to the modality — and every counter must add up.
"""

from __future__ import annotations

import threading
from collections import Counter

from pydicom.uid import generate_uid
from sqlalchemy import select

from pacsbox.app import Archive, build_archive
from pacsbox.archive.index.models import Patient, Series, Study
from pacsbox.archive.index.writer import counts
from pacsbox.settings import Settings
from tests.helpers import make_ct
from tests.integration.test_ingest import encode

EXPLICIT_LE = "1.2.840.10008.1.2.1"
THREADS_PER_ARCHIVE = 4
SERIES_PER_THREAD = 3
PER_SERIES = 6


def test_concurrent_ingest_into_the_same_studies(archive: Archive, settings: Settings):
    second = build_archive(settings, migrate=False)  # a second "worker process"
    studies = [generate_uid(), generate_uid()]
    errors: list[str] = []
    expected: Counter[str] = Counter()
    jobs = []
    for t in range(2 * THREADS_PER_ARCHIVE):
        datasets = []
        for s in range(SERIES_PER_THREAD):
            study = studies[(t + s) % 2]
            series = generate_uid()
            for i in range(PER_SERIES):
                ds = make_ct(study, series, patient_id=f"P{study[-4:]}", instance_number=i)
                datasets.append(ds)
                expected[study] += 1
        jobs.append((archive if t % 2 else second, datasets))
    start = threading.Barrier(len(jobs))

    def run(arch: Archive, datasets: list) -> None:
        start.wait()
        for ds in datasets:
            try:
                arch.ingest.store_dataset(
                    encode(ds),
                    EXPLICIT_LE,
                    sop_class_uid=ds.SOPClassUID,
                    sop_instance_uid=ds.SOPInstanceUID,
                )
            except Exception as exc:  # noqa: BLE001 - collect every failure
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        second.engine.dispose()
    assert not errors, f"{len(errors)} stores failed, e.g. {errors[:3]}"

    total = sum(expected.values())
    n_series = 2 * THREADS_PER_ARCHIVE * SERIES_PER_THREAD
    assert counts(archive.engine) == {
        "patients": 2,
        "studies": 2,
        "series": n_series,
        "instances": total,
    }
    with archive.engine.connect() as conn:
        study_rows = conn.execute(
            select(
                Study.__table__.c.study_instance_uid,
                Study.__table__.c.num_instances,
                Study.__table__.c.num_series,
            )
        ).all()
        series_counts = conn.execute(select(Series.__table__.c.num_instances)).scalars().all()
        patient_rows = conn.execute(
            select(Patient.__table__.c.num_studies, Patient.__table__.c.num_instances)
        ).all()
    assert {uid: n for uid, n, _ in study_rows} == dict(expected)
    assert sum(ns for _, _, ns in study_rows) == n_series
    assert sorted(series_counts) == [PER_SERIES] * n_series
    assert sorted(tuple(r) for r in patient_rows) == sorted((1, n) for n in expected.values())
