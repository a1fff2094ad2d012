"""Snapshot policies, their runs, VM labels, and the policy of each snapshot.

Revision ID: 0005
Revises: 0004 (the lead rechains it at merge)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vm_snapshots") as batch:
        batch.add_column(sa.Column("policy_id", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("policy_name", sa.String(64), nullable=False, server_default=""))
    op.create_index("ix_vm_snapshots_policy", "vm_snapshots", ["policy_id", "vm_id"])
    op.create_table(
        "policies",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("vm_id", sa.String(128), nullable=False),
        sa.Column("selector_json", sa.Text, nullable=False),
        sa.Column("schedule", sa.String(128), nullable=False),
        sa.Column("time_zone", sa.String(64), nullable=False),
        sa.Column("keep_last", sa.Integer, nullable=False),
        sa.Column("keep_daily", sa.Integer, nullable=False),
        sa.Column("keep_weekly", sa.Integer, nullable=False),
        sa.Column("quiesce", sa.String(16), nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("next_run", sa.Float, nullable=True),
        sa.Column("last_run", sa.Float, nullable=True),
        sa.Column("create_time", sa.Float, nullable=False),
        sa.Column("update_time", sa.Float, nullable=False),
    )
    op.create_table(
        "policy_runs",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("policy_id", sa.String(64), nullable=False),
        sa.Column("vm_id", sa.String(128), nullable=False),
        sa.Column("scheduled", sa.Float, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False, unique=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("operation_id", sa.String(64), nullable=False),
        sa.Column("vm_snapshot_id", sa.String(64), nullable=False),
        sa.Column("error_message", sa.Text, nullable=False),
        sa.Column("missed", sa.Integer, nullable=False),
        sa.Column("deleted_json", sa.Text, nullable=False),
        sa.Column("create_time", sa.Float, nullable=False),
        sa.Column("update_time", sa.Float, nullable=False),
    )
    op.create_index("ix_policy_runs_policy_seq", "policy_runs", ["policy_id", "seq"])
    op.create_index("ix_policy_runs_outcome", "policy_runs", ["outcome"])
    op.create_table(
        "vm_labels",
        sa.Column("vm_id", sa.String(128), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(64), nullable=False),
    )
    op.create_index("ix_vm_labels_key_value", "vm_labels", ["key", "value"])


def downgrade() -> None:
    op.drop_table("vm_labels")
    op.drop_table("policy_runs")
    op.drop_table("policies")
    op.drop_index("ix_vm_snapshots_policy", "vm_snapshots")
    with op.batch_alter_table("vm_snapshots") as batch:
        batch.drop_column("policy_name")
        batch.drop_column("policy_id")
