"""Index writes: one transaction per stored instance (SPEC A4).

Uses SQLAlchemy Core (no ORM unit of work) because this runs for every received instance.
Parents (patient, study, series) are got-or-created inside a savepoint so that concurrent
associations in several worker processes can create the same study without a global lock; on
SQLite the write transaction starts with ``BEGIN IMMEDIATE`` (see ``db.py``) so it never
deadlocks upgrading a read lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from pacsbox.archive.header import InstanceHeader
from pacsbox.archive.index.models import Instance, Patient, Series, Study

PATIENT: Table = Patient.__table__  # type: ignore[assignment]
STUDY: Table = Study.__table__  # type: ignore[assignment]
SERIES: Table = Series.__table__  # type: ignore[assignment]
INSTANCE: Table = Instance.__table__  # type: ignore[assignment]


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class ExistingInstance:
    id: int
    series_fk: int
    file_path: str
    file_size: int
    linked: bool


@dataclass(frozen=True)
class StudyOwner:
    """The patient a study already belongs to (for the patient-ID-conflict policy, A703)."""

    patient_id: str
    issuer_of_patient_id: str


@dataclass(frozen=True)
class Parents:
    """Row ids of an instance's series, study and patient (cached per process)."""

    series_id: int
    study_id: int
    patient_id: int


@dataclass(frozen=True)
class StoredInstanceRow:
    instance_id: int
    parents: Parents
    new_study: bool
    new_series: bool
    replaced: bool


def find_instance(conn: Connection, sop_uid: str) -> ExistingInstance | None:
    row = conn.execute(
        select(
            INSTANCE.c.id,
            INSTANCE.c.series_fk,
            INSTANCE.c.file_path,
            INSTANCE.c.file_size,
            INSTANCE.c.linked,
        ).where(INSTANCE.c.sop_instance_uid == sop_uid)
    ).first()
    return ExistingInstance(*row) if row else None


def study_owner(conn: Connection, study_uid: str) -> StudyOwner | None:
    row = conn.execute(
        select(PATIENT.c.patient_id, PATIENT.c.issuer_of_patient_id)
        .join(STUDY, STUDY.c.patient_fk == PATIENT.c.id)
        .where(STUDY.c.study_instance_uid == study_uid)
    ).first()
    return StudyOwner(*row) if row else None


def _get_or_create(
    conn: Connection, table: Table, where: Any, values: dict[str, Any]
) -> tuple[int, bool]:
    """Return (id, created). Concurrent creators race on the unique key, one wins."""
    row = conn.execute(select(table.c.id).where(where)).first()
    if row:
        return row[0], False
    try:
        with conn.begin_nested():
            new_id = conn.execute(insert(table).values(**values)).inserted_primary_key[0]
        return new_id, True
    except IntegrityError:
        row = conn.execute(select(table.c.id).where(where)).first()
        if row is None:
            raise
        return row[0], False


def _nonempty(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v not in ("", None)}


def remove_instance_row(conn: Connection, instance_id: int) -> None:
    """Delete one instance row and decrement its parents' counters (parents are kept)."""
    row = conn.execute(
        select(INSTANCE.c.series_fk, INSTANCE.c.file_size, SERIES.c.study_fk, STUDY.c.patient_fk)
        .join(SERIES, SERIES.c.id == INSTANCE.c.series_fk)
        .join(STUDY, STUDY.c.id == SERIES.c.study_fk)
        .where(INSTANCE.c.id == instance_id)
    ).first()
    if row is None:
        return
    series_id, size, study_id, patient_id = row
    conn.execute(delete(INSTANCE).where(INSTANCE.c.id == instance_id))
    conn.execute(
        update(SERIES)
        .where(SERIES.c.id == series_id)
        .values(num_instances=SERIES.c.num_instances - 1)
    )
    conn.execute(
        update(STUDY)
        .where(STUDY.c.id == study_id)
        .values(num_instances=STUDY.c.num_instances - 1, size_bytes=STUDY.c.size_bytes - size)
    )
    conn.execute(
        update(PATIENT)
        .where(PATIENT.c.id == patient_id)
        .values(num_instances=PATIENT.c.num_instances - 1)
    )


class ParentCache:
    """Series UID → parent row ids, so the 2nd…nth instance of a series skips 3 look-ups.

    Rows are never re-keyed; if one is deleted (study deletion), the insert fails on its
    foreign key, the caller clears the cache and retries.
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._map: dict[str, Parents] = {}

    def get(self, series_uid: str) -> Parents | None:
        return self._map.get(series_uid)

    def put(self, series_uid: str, parents: Parents) -> None:
        if len(self._map) >= self.size:
            self._map.pop(next(iter(self._map)))
        self._map[series_uid] = parents

    def clear(self) -> None:
        self._map.clear()


def record_instance(
    conn: Connection,
    hdr: InstanceHeader,
    *,
    cache: ParentCache | None = None,
    transfer_syntax_uid: str,
    file_path: str,
    file_size: int,
    storage_format: str,
    linked: bool,
    source_ae: str,
    replace_id: int | None = None,
) -> StoredInstanceRow:
    """Insert (or replace) the rows for one instance inside the caller's transaction."""
    now = utcnow()
    if replace_id is not None:
        remove_instance_row(conn, replace_id)
    cached = cache.get(hdr.series_instance_uid) if cache is not None else None
    if cached is not None:
        patient_id, study_id, series_id = cached.patient_id, cached.study_id, cached.series_id
        new_study = new_series = False
    else:
        patient_id, study_id, series_id, new_study, new_series = _parents(conn, hdr, source_ae, now)
    instance_id = conn.execute(
        insert(INSTANCE).values(
            **hdr.instance,
            sop_instance_uid=hdr.sop_instance_uid,
            sop_class_uid=hdr.sop_class_uid,
            series_fk=series_id,
            transfer_syntax_uid=transfer_syntax_uid,
            storage_format=storage_format,
            file_path=file_path,
            linked=linked,
            file_size=file_size,
            source_ae=source_ae,
            received_at=now,
            attributes=hdr.attributes_json,
        )
    ).inserted_primary_key[0]

    # Counters of the parents (PS3.4 C.3.2 "Number of ... Related ..." keys).
    conn.execute(
        update(SERIES)
        .where(SERIES.c.id == series_id)
        .values(num_instances=SERIES.c.num_instances + 1, updated_at=now)
    )
    study_update: dict[str, Any] = {
        "num_instances": STUDY.c.num_instances + 1,
        "size_bytes": STUDY.c.size_bytes + file_size,
        "updated_at": now,
    }
    if new_series:
        study_update["num_series"] = STUDY.c.num_series + 1
    conn.execute(update(STUDY).where(STUDY.c.id == study_id).values(**study_update))
    patient_update: dict[str, Any] = {"num_instances": PATIENT.c.num_instances + 1}
    if new_series:
        patient_update["num_series"] = PATIENT.c.num_series + 1
        # Demographics: the newest non-empty values win (a corrected name replaces the old).
        patient_update.update(
            {k: v for k, v in _nonempty(hdr.patient).items() if k != "patient_id"}
        )
        patient_update["updated_at"] = now
    if new_study:
        patient_update["num_studies"] = PATIENT.c.num_studies + 1
    conn.execute(update(PATIENT).where(PATIENT.c.id == patient_id).values(**patient_update))
    if new_series and hdr.series.get("modality"):
        _add_modality(conn, study_id, hdr.series["modality"])
    return StoredInstanceRow(
        instance_id,
        Parents(series_id, study_id, patient_id),
        new_study,
        new_series,
        replace_id is not None,
    )


def _parents(
    conn: Connection, hdr: InstanceHeader, source_ae: str, now: datetime
) -> tuple[int, int, int, bool, bool]:
    """Get or create the parent rows: (patient, study, series, new study?, new series?)."""
    existing_study = conn.execute(
        select(STUDY.c.id, STUDY.c.patient_fk).where(
            STUDY.c.study_instance_uid == hdr.study_instance_uid
        )
    ).first()
    new_study = False
    if existing_study is not None:
        # The study keeps its patient, even when this instance names another Patient ID
        # (patient_id_conflict = accept); the counters follow the study.
        study_id, patient_id = existing_study
    else:
        patient_values = {**hdr.patient, "created_at": now, "updated_at": now}
        patient_id, _ = _get_or_create(
            conn,
            PATIENT,
            and_(
                PATIENT.c.patient_id == hdr.patient["patient_id"],
                PATIENT.c.issuer_of_patient_id == hdr.patient["issuer_of_patient_id"],
            ),
            patient_values,
        )
        study_values = {
            **hdr.study,
            "study_instance_uid": hdr.study_instance_uid,
            "patient_fk": patient_id,
            "source_ae": source_ae,
            "received_at": now,
            "updated_at": now,
        }
        study_id, new_study = _get_or_create(
            conn, STUDY, STUDY.c.study_instance_uid == hdr.study_instance_uid, study_values
        )
        if not new_study:  # another process created it a moment ago
            patient_id = conn.execute(
                select(STUDY.c.patient_fk).where(STUDY.c.id == study_id)
            ).scalar_one()
    series_values = {
        **hdr.series,
        "series_instance_uid": hdr.series_instance_uid,
        "study_fk": study_id,
        "source_ae": source_ae,
        "received_at": now,
        "updated_at": now,
    }
    series_id, new_series = _get_or_create(
        conn, SERIES, SERIES.c.series_instance_uid == hdr.series_instance_uid, series_values
    )
    return patient_id, study_id, series_id, new_study, new_series


def _add_modality(conn: Connection, study_id: int, modality: str) -> None:
    current = conn.execute(
        select(STUDY.c.modalities_in_study).where(STUDY.c.id == study_id)
    ).scalar_one()
    values = [m for m in (current or "").split("\\") if m]
    if modality not in values:
        values.append(modality)
        conn.execute(
            update(STUDY)
            .where(STUDY.c.id == study_id)
            .values(modalities_in_study="\\".join(sorted(values))[:256])
        )


def counts(engine: Engine) -> dict[str, int]:
    """Number of patients, studies, series, instances in the index."""
    with engine.connect() as conn:
        return {
            name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for name, table in (
                ("patients", PATIENT),
                ("studies", STUDY),
                ("series", SERIES),
                ("instances", INSTANCE),
            )
        }
