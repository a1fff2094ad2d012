"""A VM's history off its hot statements: a partial index over the rows that are
not REMOVED, which a create's live count, the listing of a VM's snapshots and
its live snapshots read (docs/design.md, "A VM's history").

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: The same text as schema.SHOWN_PREDICATE (a migration does not import the
#: schema it migrates from: it stays what it was when written).
_SHOWN = "state <> 'REMOVED'"


def upgrade() -> None:
    op.create_index(
        "ix_vm_snapshots_vm_shown",
        "vm_snapshots",
        ["vm_id", "seq"],
        sqlite_where=sa.text(_SHOWN),
        postgresql_where=sa.text(_SHOWN),
    )


def downgrade() -> None:
    op.drop_index("ix_vm_snapshots_vm_shown", table_name="vm_snapshots")
