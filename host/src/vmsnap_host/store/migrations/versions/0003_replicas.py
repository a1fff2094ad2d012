"""Replicas: uniqueness rules in the schema, replica heartbeats.

Revision ID: 0003
Revises: 0002

The per-VM rules that one process used to guard with a lock are unique
indexes now, so that host replicas on one PostgreSQL cannot break them: a live
name once per VM, one current snapshot per VM (request ids were unique from
0001). Partial indexes work on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

LIVE = "state IN ('ALLOCATED', 'CREATING', 'READY', 'REVERTING')"


def upgrade() -> None:
    # A catalog written before the rule could hold two current rows for a VM (it
    # never should have): keep the newest.
    op.execute(
        "UPDATE vm_snapshots SET is_current = false WHERE is_current AND EXISTS ("
        "SELECT 1 FROM vm_snapshots newer WHERE newer.vm_id = vm_snapshots.vm_id "
        "AND newer.is_current AND newer.seq > vm_snapshots.seq)"
    )
    op.create_index(
        "ux_vm_snapshots_live_name",
        "vm_snapshots",
        ["vm_id", "name"],
        unique=True,
        sqlite_where=sa.text(LIVE),
        postgresql_where=sa.text(LIVE),
    )
    op.create_index(
        "ux_vm_snapshots_current",
        "vm_snapshots",
        ["vm_id"],
        unique=True,
        sqlite_where=sa.text("is_current"),
        postgresql_where=sa.text("is_current"),
    )
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("expire_time", sa.Float, nullable=False),
        sa.Column("start_time", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("replicas")
    op.drop_index("ux_vm_snapshots_current", "vm_snapshots")
    op.drop_index("ux_vm_snapshots_live_name", "vm_snapshots")
