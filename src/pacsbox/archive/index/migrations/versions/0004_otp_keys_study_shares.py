"""one-time login keys and study share links (SPEC E6, E7)

- ``otp_key``: the RSA key pairs handed out by ``GET /api/otp`` (web/otp.py). The private key
  (PKCS#8 PEM) lives here so that any HTTP worker process or node can answer the login; a row
  is deleted when it is used (single use) and purged once expired.
- ``study_share``: share links of ``POST /api/studies/{uid}/shares`` (archive/sharing.py).
  Only the SHA-256 of the link token is stored; the study is named by its Study Instance UID
  (no foreign key: a deleted study leaves a link that answers 404).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "otp_key",
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_otp_key")),
    )
    op.create_index(op.f("ix_otp_key_expires_at"), "otp_key", ["expires_at"])
    op.create_index(op.f("ix_otp_key_client"), "otp_key", ["client"])
    op.create_table(
        "study_share",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("validity_from", sa.String(length=16), nullable=False),
        sa.Column("note", sa.String(length=255), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_by", sa.String(length=64), nullable=False),
        sa.Column("last_access_at", sa.DateTime(), nullable=True),
        sa.Column("access_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study_share")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_study_share_token_hash")),
    )
    op.create_index(
        op.f("ix_study_share_study_instance_uid"), "study_share", ["study_instance_uid"]
    )
    op.create_index(op.f("ix_study_share_created_by"), "study_share", ["created_by"])


def downgrade() -> None:
    op.drop_table("study_share")
    op.drop_table("otp_key")
