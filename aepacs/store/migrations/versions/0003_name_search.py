"""Patient name searches served by an index: a case-folded copy of PatientName, compared bytewise.

Revision ID: 0003
Revises: 0002

``SMITH*`` is the name search a PACS sees most; it matches case-insensitively
(PS3.4 C.2.2.2.1). The index answers it from ``patient_name_fold`` (the name
lowercased, see :func:`aepacs.store.schema.fold`) by a prefix range, exact in
PostgreSQL's "C" collation and SQLite's default whatever the database's locale.
Existing rows are folded here, in batches.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BATCH = 10_000


def upgrade() -> None:
    bytewise = sa.String(324).with_variant(sa.String(324, collation="C"), "postgresql")
    with op.batch_alter_table("patients") as batch:
        batch.add_column(sa.Column("patient_name_fold", bytewise, nullable=False, server_default=""))
    conn = op.get_bind()
    table = sa.table("patients", sa.column("pk", sa.Integer), sa.column("patient_name", sa.String),
                     sa.column("patient_name_fold", sa.String))
    after = 0
    while True:  # folded as new rows are (str.lower), not by the database's lower()
        rows = conn.execute(sa.select(table.c.pk, table.c.patient_name).where(table.c.pk > after)
                            .order_by(table.c.pk).limit(_BATCH)).all()
        if not rows:
            break
        conn.execute(table.update().where(table.c.pk == sa.bindparam("b_pk"))
                     .values(patient_name_fold=sa.bindparam("b_fold")),
                     [{"b_pk": pk, "b_fold": (name or "").lower()[:324]} for pk, name in rows])
        after = rows[-1][0]
    op.create_index("ix_patients_patient_name_fold", "patients", ["patient_name_fold"])


def downgrade() -> None:
    op.drop_index("ix_patients_patient_name_fold", table_name="patients")
    with op.batch_alter_table("patients") as batch:
        batch.drop_column("patient_name_fold")
