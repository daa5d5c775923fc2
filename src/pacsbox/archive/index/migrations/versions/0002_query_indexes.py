"""query indexes and the person-name search column (C-FIND, PS3.4 Annex C)

- ``patient.patient_name_search``: upper-cased normalised Patient's Name, so case-insensitive
  name matching (exact and ``SMITH*``) is an index look-up on every database; back-filled
  here, written by the index writer afterwards.
- indexes for every matched key: the name search column, Accession Number and Study ID (on
  PostgreSQL with ``varchar_pattern_ops``, which serves = and LIKE 'ABC%' whatever the
  collation; there also Patient ID, elsewhere served by its unique index), and series
  (modality, study_fk) for Modality and Modalities in Study, replacing the modality index.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_PATTERN = "varchar_pattern_ops"


def _search_name(name: str | None) -> str:
    # Same as pacsbox.archive.index.writer.search_name (copied: migrations stay frozen).
    text = (name or "").strip()
    groups = [g.rstrip("^ ") for g in text.split("=")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups).upper()[:324]


def upgrade() -> None:
    op.add_column(
        "patient",
        sa.Column("patient_name_search", sa.String(length=324), nullable=False, server_default=""),
    )
    bind = op.get_bind()
    patient = sa.table(
        "patient",
        sa.column("id", sa.Integer),
        sa.column("patient_name", sa.String),
        sa.column("patient_name_search", sa.String),
    )
    last = 0
    while True:  # back-fill in batches (bounded memory on big indexes)
        rows = bind.execute(
            sa.select(patient.c.id, patient.c.patient_name)
            .where(patient.c.id > last)
            .order_by(patient.c.id)
            .limit(5000)
        ).fetchall()
        if not rows:
            break
        updates = [
            {"pid": r.id, "name": _search_name(r.patient_name)} for r in rows if r.patient_name
        ]
        if updates:
            bind.execute(
                sa.update(patient)
                .where(patient.c.id == sa.bindparam("pid"))
                .values(patient_name_search=sa.bindparam("name")),
                updates,
            )
        last = rows[-1].id
    op.create_index(
        "ix_patient_patient_name_search",
        "patient",
        ["patient_name_search"],
        postgresql_ops={"patient_name_search": _PATTERN},
    )
    if bind.dialect.name == "postgresql":
        # Elsewhere the (patient_id, issuer) unique index serves = and prefix ranges; on
        # PostgreSQL LIKE 'ABC%' needs the pattern operator class.
        op.create_index(
            "ix_patient_patient_id",
            "patient",
            ["patient_id"],
            postgresql_ops={"patient_id": _PATTERN},
        )
    # Accession Number: recreated with the pattern operator class on PostgreSQL.
    op.drop_index("ix_study_accession_number", table_name="study")
    op.create_index(
        "ix_study_accession_number",
        "study",
        ["accession_number"],
        postgresql_ops={"accession_number": _PATTERN},
    )
    op.create_index(
        "ix_study_study_id", "study", ["study_id"], postgresql_ops={"study_id": _PATTERN}
    )
    # (modality, study_fk) replaces the modality index: Modality matching and the covering
    # semi-join of Modalities in Study.
    op.create_index("ix_series_modality_study_fk", "series", ["modality", "study_fk"])
    op.drop_index("ix_series_modality", table_name="series")


def downgrade() -> None:
    op.create_index("ix_series_modality", "series", ["modality"])
    op.drop_index("ix_series_modality_study_fk", table_name="series")
    op.drop_index("ix_study_study_id", table_name="study")
    op.drop_index("ix_study_accession_number", table_name="study")
    op.create_index("ix_study_accession_number", "study", ["accession_number"])
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_patient_patient_id", table_name="patient")
    op.drop_index("ix_patient_patient_name_search", table_name="patient")
    op.drop_column("patient", "patient_name_search")
