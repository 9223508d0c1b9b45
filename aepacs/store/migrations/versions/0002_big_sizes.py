"""Object sizes as 64-bit integers (a multi-frame object may exceed 2 GiB; PostgreSQL's INTEGER is 32-bit).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return  # SQLite's INTEGER holds 64 bits already
    with op.batch_alter_table("instances") as batch:
        batch.alter_column("blob_size", type_=sa.BigInteger, existing_type=sa.Integer, existing_nullable=False)
        batch.alter_column("source_size", type_=sa.BigInteger, existing_type=sa.Integer, existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    with op.batch_alter_table("instances") as batch:
        batch.alter_column("blob_size", type_=sa.Integer, existing_type=sa.BigInteger, existing_nullable=False)
        batch.alter_column("source_size", type_=sa.Integer, existing_type=sa.BigInteger, existing_nullable=False)
