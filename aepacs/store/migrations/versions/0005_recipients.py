"""The recipients the archive seals what it sends to (``aepacs recipients``).

Revision ID: 0005
Revises: 0004

One row per recipient: its X25519 public key, the AE title and DICOMweb token that identify it; see
:data:`aepacs.store.schema.recipients`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recipients",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("recipient_id", sa.String(32), nullable=False, unique=True),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("aet", sa.String(16)),
        sa.Column("token_sha256", sa.String(64)),
        sa.Column("added_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float),
    )
    for column in ("aet", "token_sha256"):
        op.create_index(f"ix_recipients_{column}", "recipients", [column])


def downgrade() -> None:
    op.drop_table("recipients")
