"""Files other programs keep in aepacs: Orthanc's storage area (``plugins/orthanc``).

Revision ID: 0004
Revises: 0003

One row per file, bound to its program's file id and content type; see
:data:`aepacs.store.schema.attachments`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attachments",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("object_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("content_type", sa.Integer, nullable=False),
        sa.Column("codec", sa.String(64), nullable=False),
        sa.Column("kek_version", sa.Integer, nullable=False),
        sa.Column("blob_key", sa.String(64), nullable=False),
        sa.Column("blob_size", sa.BigInteger, nullable=False),
        sa.Column("source_size", sa.BigInteger, nullable=False),
        sa.Column("source_sha256", sa.String(64), nullable=False),
        sa.Column("stored_at", sa.Float, nullable=False),
        sa.Column("key_slot", sa.LargeBinary),
        sa.Column("sealed_at", sa.Float),
    )
    for column in ("codec", "kek_version", "blob_key"):
        op.create_index(f"ix_attachments_{column}", "attachments", [column])


def downgrade() -> None:
    op.drop_table("attachments")
