"""Security (issue 12): projects of VMs, snapshots and operations; the audit log.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vm_snapshots") as batch:
        batch.add_column(sa.Column("project", sa.String(128), nullable=False, server_default=""))
    with op.batch_alter_table("operations") as batch:
        batch.add_column(sa.Column("project", sa.String(128), nullable=False, server_default=""))
    op.create_table(
        "vm_projects",
        sa.Column("vm_id", sa.String(128), primary_key=True),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("update_time", sa.Float, nullable=False),
    )
    op.create_index("ix_vm_projects_project", "vm_projects", ["project"])
    op.create_table(
        "audit_records",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("target", sa.String(1024), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("result", sa.String(32), nullable=False),
        sa.Column("refused", sa.Boolean, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("peer", sa.String(255), nullable=False),
    )
    op.create_index("ix_audit_principal", "audit_records", ["principal", "seq"])
    op.create_index("ix_audit_project", "audit_records", ["project", "seq"])


def downgrade() -> None:
    op.drop_index("ix_audit_project", "audit_records")
    op.drop_index("ix_audit_principal", "audit_records")
    op.drop_table("audit_records")
    op.drop_index("ix_vm_projects_project", "vm_projects")
    op.drop_table("vm_projects")
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("project")
    with op.batch_alter_table("vm_snapshots") as batch:
        batch.drop_column("project")
