"""The initial catalog: snapshots, operations, per-VM leases, registrations.

Revision ID: 0001
Revises:
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
        "vm_snapshots",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("vm_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("agent", sa.String(128), nullable=False),
        sa.Column("include_memory", sa.Boolean, nullable=False),
        sa.Column("quiesce", sa.String(16), nullable=False),
        sa.Column("consistency", sa.String(16), nullable=False),
        sa.Column("groups_json", sa.Text, nullable=False),
        sa.Column("parent_id", sa.String(64), nullable=False),
        sa.Column("is_current", sa.Boolean, nullable=False),
        sa.Column("freeze_start", sa.Float, nullable=True),
        sa.Column("freeze_seconds", sa.Float, nullable=True),
        sa.Column("error_code", sa.Integer, nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("error_reason", sa.String(64), nullable=True),
        sa.Column("warnings_json", sa.Text, nullable=False),
        sa.Column("parameters_json", sa.Text, nullable=False),
        sa.Column("cleanup_json", sa.Text, nullable=False),
        sa.Column("create_time", sa.Float, nullable=False),
        sa.Column("update_time", sa.Float, nullable=False),
    )
    op.create_index("ix_vm_snapshots_vm_seq", "vm_snapshots", ["vm_id", "seq"])
    op.create_index("ix_vm_snapshots_vm_name", "vm_snapshots", ["vm_id", "name"])
    op.create_index("ix_vm_snapshots_state", "vm_snapshots", ["state"])
    op.create_index("ix_vm_snapshots_parent", "vm_snapshots", ["parent_id"])
    op.create_table(
        "operations",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("vm_id", sa.String(128), nullable=False),
        sa.Column("vm_snapshot_id", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False, unique=True),
        sa.Column("done", sa.Boolean, nullable=False),
        sa.Column("error_code", sa.Integer, nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("error_reason", sa.String(64), nullable=True),
        sa.Column("progress", sa.Integer, nullable=False),
        sa.Column("step", sa.String(255), nullable=False),
        sa.Column("journal_json", sa.Text, nullable=False),
        sa.Column("params_json", sa.Text, nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("create_time", sa.Float, nullable=False),
        sa.Column("update_time", sa.Float, nullable=False),
    )
    op.create_index("ix_operations_vm_seq", "operations", ["vm_id", "seq"])
    op.create_index("ix_operations_done", "operations", ["done"])
    op.create_table(
        "vm_leases",
        sa.Column("vm_id", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("operation_id", sa.String(64), nullable=False),
        sa.Column("expire_time", sa.Float, nullable=False),
    )
    op.create_table(
        "registrations",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("address", sa.String(1024), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("sort_order", sa.Integer, nullable=False),
        sa.Column("tls_json", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("registrations")
    op.drop_table("vm_leases")
    op.drop_table("operations")
    op.drop_table("vm_snapshots")
