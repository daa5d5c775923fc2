"""Index schema (SPEC A4): patient / study / series / instance plus the AE registry.

Columns hold the keys of the reference query tables (PS3.4 §C.6.1.1 and the conformance tables
the SPEC cites) so the query engine can match them in SQL, the counters that answer "Number of
... Related ..." without aggregation, and per-instance storage facts (file, size, transfer
syntax, source AE, received time). ``instance.attributes`` holds the DICOM JSON model
(PS3.18 §F.2) of the non-bulk top-level attributes for metadata queries.

Schema changes go through Alembic migrations (``migrations/versions``), never ``create_all``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Long text: MariaDB's TEXT stops at 64 KiB, which a data set's JSON can exceed.
LongText = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
UID = String(64)
PN = String(324)  # 5 components x 64 chars + separators, per component group


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Patient(Base):
    __tablename__ = "patient"
    __table_args__ = (UniqueConstraint("patient_id", "issuer_of_patient_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(PN, default="", index=True)
    #: Upper-cased, normalised Patient's Name for case-insensitive matching (migration 0002;
    #: written by the index writer, see archive.query.search_name).
    patient_name_search: Mapped[str] = mapped_column(PN, default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    patient_birth_time: Mapped[str] = mapped_column(String(16), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    num_studies: Mapped[int] = mapped_column(Integer, default=0)
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class Study(Base):
    __tablename__ = "study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="")
    study_id: Mapped[str] = mapped_column(String(64), default="")
    study_description: Mapped[str] = mapped_column(String(256), default="")
    referring_physician_name: Mapped[str] = mapped_column(PN, default="")
    modalities_in_study: Mapped[str] = mapped_column(String(256), default="")
    patient_age: Mapped[str] = mapped_column(String(8), default="")
    patient_size: Mapped[str] = mapped_column(String(16), default="")
    patient_weight: Mapped[str] = mapped_column(String(16), default="")
    institution_name: Mapped[str] = mapped_column(String(128), default="")
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    source_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    series_date: Mapped[str] = mapped_column(String(8), default="")
    series_time: Mapped[str] = mapped_column(String(16), default="")
    series_description: Mapped[str] = mapped_column(String(256), default="")
    body_part_examined: Mapped[str] = mapped_column(String(64), default="")
    station_name: Mapped[str] = mapped_column(String(64), default="")
    protocol_name: Mapped[str] = mapped_column(String(64), default="")
    performed_procedure_step_start_date: Mapped[str] = mapped_column(String(8), default="")
    performed_procedure_step_start_time: Mapped[str] = mapped_column(String(16), default="")
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    source_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID, index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    instance_creation_date: Mapped[str] = mapped_column(String(8), default="")
    instance_creation_time: Mapped[str] = mapped_column(String(16), default="")
    content_date: Mapped[str] = mapped_column(String(8), default="")
    content_time: Mapped[str] = mapped_column(String(16), default="")
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    samples_per_pixel: Mapped[int | None] = mapped_column(Integer, nullable=True)
    bits_allocated: Mapped[int | None] = mapped_column(Integer, nullable=True)
    bits_stored: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pixel_representation: Mapped[int | None] = mapped_column(Integer, nullable=True)
    photometric_interpretation: Mapped[str] = mapped_column(String(16), default="")
    number_of_frames: Mapped[int | None] = mapped_column(Integer, nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    storage_format: Mapped[str] = mapped_column(String(8), default="part10")
    file_path: Mapped[str] = mapped_column(String(1024))
    linked: Mapped[bool] = mapped_column(Boolean, default=False)
    file_size: Mapped[int] = mapped_column(BigInteger)
    source_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime)
    attributes: Mapped[str] = mapped_column(LongText, default="{}")


Index("ix_instance_received_at", Instance.received_at)

# Query indexes (migration 0002, archive/query.py). On PostgreSQL the columns matched with
# wildcards get the varchar_pattern_ops operator class, which serves both = and LIKE 'ABC%'
# whatever the database collation.
_PATTERN = "varchar_pattern_ops"
Index(
    "ix_patient_patient_name_search",
    Patient.patient_name_search,
    postgresql_ops={"patient_name_search": _PATTERN},
)
# PostgreSQL only: elsewhere the (patient_id, issuer) unique index serves = and prefixes.
_patient_id = Index(
    "ix_patient_patient_id", Patient.patient_id, postgresql_ops={"patient_id": _PATTERN}
)
_patient_id.ddl_if(dialect="postgresql")
Index(
    "ix_study_accession_number",
    Study.accession_number,
    postgresql_ops={"accession_number": _PATTERN},
)
Index("ix_study_study_id", Study.study_id, postgresql_ops={"study_id": _PATTERN})
Index("ix_series_modality_study_fk", Series.modality, Series.study_fk)
# The study list's default order, newest first (migration 0005, archive/studylist.py).
Index("ix_study_study_date_time", Study.study_date, Study.study_time, Study.id)


class RemoteAE(Base):
    """The AE registry (SPEC A6): who may associate with us and where we can send."""

    __tablename__ = "remote_ae"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    host: Mapped[str] = mapped_column(String(255), default="")
    port: Mapped[int] = mapped_column(Integer, default=104)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    #: Capability flags: may store to us, query us, retrieve from us; we may send to it.
    allow_store: Mapped[bool] = mapped_column(Boolean, default=True)
    allow_query: Mapped[bool] = mapped_column(Boolean, default=True)
    allow_retrieve: Mapped[bool] = mapped_column(Boolean, default=True)
    is_destination: Mapped[bool] = mapped_column(Boolean, default=True)
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    auto_registered: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
