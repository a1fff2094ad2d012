"""The live count from the index alone: ``ix_vm_snapshots_vm_shown`` carries the
state, so admission's count of a VM's live snapshots (not REMOVED, not ERROR) reads
no table row (docs/design.md, "A state write writes the state"). It costs no write
more: every statement that changes a row's state rewrote its entry already (the
predicate names the state).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: The same text as schema.SHOWN_PREDICATE (a migration does not import the
#: schema it migrates from: it stays what it was when written).
_SHOWN = "state <> 'REMOVED'"


def _shown(columns: list[str]) -> None:
    op.drop_index("ix_vm_snapshots_vm_shown", table_name="vm_snapshots")
    op.create_index(
        "ix_vm_snapshots_vm_shown",
        "vm_snapshots",
        columns,
        sqlite_where=sa.text(_SHOWN),
        postgresql_where=sa.text(_SHOWN),
    )


def upgrade() -> None:
    _shown(["vm_id", "seq", "state"])


def downgrade() -> None:
    _shown(["vm_id", "seq"])
