"""The index as the releases before migrations made it (patients, studies, series, instances,
pending blobs, with the columns added in place: psnr, ssim, key_slot, sealed_at).

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(64), nullable=False),
        sa.Column("patient_name", sa.String(324), nullable=False),
        sa.Column("patient_birth_date", sa.String(8), nullable=False),
        sa.Column("patient_sex", sa.String(16), nullable=False),
        sa.UniqueConstraint("patient_id", "issuer_of_patient_id"),
    )
    op.create_table(
        "studies",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("patient_pk", sa.Integer, sa.ForeignKey("patients.pk"), nullable=False, index=True),
        sa.Column("study_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("study_date", sa.String(8), nullable=False, index=True),
        sa.Column("study_time", sa.String(16), nullable=False),
        sa.Column("accession_number", sa.String(64), nullable=False, index=True),
        sa.Column("study_id", sa.String(16), nullable=False),
        sa.Column("study_description", sa.String(64), nullable=False),
        sa.Column("referring_physician_name", sa.String(324), nullable=False),
        sa.Column("modalities_in_study", sa.String(256), nullable=False),
    )
    op.create_table(
        "series",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("study_pk", sa.Integer, sa.ForeignKey("studies.pk"), nullable=False, index=True),
        sa.Column("series_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("series_number", sa.Integer, nullable=True),
        sa.Column("series_description", sa.String(64), nullable=False),
        sa.Column("body_part_examined", sa.String(16), nullable=False),
    )
    op.create_table(
        "instances",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("series_pk", sa.Integer, sa.ForeignKey("series.pk"), nullable=False, index=True),
        sa.Column("sop_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("instance_number", sa.Integer, nullable=True),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("rows", sa.Integer, nullable=True),
        sa.Column("columns", sa.Integer, nullable=True),
        sa.Column("number_of_frames", sa.Integer, nullable=True),
        sa.Column("codec", sa.String(64), nullable=False),
        sa.Column("kek_version", sa.Integer, nullable=False, index=True),
        sa.Column("blob_key", sa.String(64), nullable=False, index=True),
        sa.Column("blob_size", sa.Integer, nullable=False),
        sa.Column("source_size", sa.Integer, nullable=False),
        sa.Column("source_sha256", sa.String(64), nullable=False),
        sa.Column("psnr", sa.Float, nullable=True),
        sa.Column("ssim", sa.Float, nullable=True),
        sa.Column("stored_at", sa.Float, nullable=False),
        sa.Column("key_slot", sa.LargeBinary, nullable=True),
        sa.Column("sealed_at", sa.Float, nullable=True),
    )
    op.create_table(
        "pending_blobs",
        sa.Column("blob_key", sa.String(64), primary_key=True),
        sa.Column("sop_uid", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(160), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("pending_blobs", "instances", "series", "studies", "patients"):
        op.drop_table(table)
