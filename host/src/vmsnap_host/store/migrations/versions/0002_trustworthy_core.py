"""The trustworthy core: kept revert states, volume owners, findings, fencing.

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
    with op.batch_alter_table("vm_snapshots") as batch:
        batch.add_column(sa.Column("missing", sa.Text, nullable=False, server_default=""))
    with op.batch_alter_table("vm_leases") as batch:
        batch.add_column(sa.Column("fence", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "kept_states",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("operation_id", sa.String(64), nullable=False),
        sa.Column("vm_id", sa.String(128), nullable=False),
        sa.Column("vm_snapshot_id", sa.String(64), nullable=False),
        sa.Column("result_json", sa.Text, nullable=False),
        sa.Column("create_time", sa.Float, nullable=False),
    )
    op.create_index("ix_kept_states_operation", "kept_states", ["operation_id"])
    op.create_table(
        "volume_owners",
        sa.Column("locator", sa.String(1024), primary_key=True),
        sa.Column("driver", sa.String(128), nullable=False),
        sa.Column("update_time", sa.Float, nullable=False),
    )
    op.create_table(
        "findings",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("peer", sa.String(128), nullable=False),
        sa.Column("object_id", sa.String(255), nullable=False),
        sa.Column("vm_id", sa.String(128), nullable=False),
        sa.Column("vm_snapshot_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_findings_time", "findings", ["time"])


def downgrade() -> None:
    op.drop_index("ix_findings_time", "findings")
    op.drop_table("findings")
    op.drop_table("volume_owners")
    op.drop_index("ix_kept_states_operation", "kept_states")
    op.drop_table("kept_states")
    with op.batch_alter_table("vm_leases") as batch:
        batch.drop_column("fence")
    with op.batch_alter_table("vm_snapshots") as batch:
        batch.drop_column("missing")
