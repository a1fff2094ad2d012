"""Tables of the host's catalog, in portable SQLAlchemy Core.

Only types and constructs that SQLite and PostgreSQL share: times are epoch
seconds (Float), structured values are JSON text, ordering uses an integer
sequence, and the uniqueness rules are (partial) unique indexes, which both
enforce: a live name once per VM, one current snapshot per VM, a request id
once. Indexes serve the hot paths: one VM's snapshots in order (the
catalog benchmark lists one VM among 100k), name lookups per VM, unfinished
operations on start.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

#: The states in which a snapshot holds its name (migration 0003 spells it too).
LIVE_NAME_PREDICATE = "state IN ('ALLOCATED', 'CREATING', 'READY', 'REVERTING')"
#: The rows a VM's listing shows and its live count reads: every one but the
#: REMOVED, its history (docs/design.md, "A VM's history"). Statements that should
#: use its index say it in these words, with the value as a literal: a planner
#: proves a partial index usable from the query's text, never from a bound value.
SHOWN_PREDICATE = "state <> 'REMOVED'"
#: The one current snapshot of a VM (the partial unique index's predicate).
CURRENT_PREDICATE = "is_current"

vm_snapshots = Table(
    "vm_snapshots",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("vm_id", String(128), nullable=False),
    Column("name", String(255), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("state", String(16), nullable=False),
    Column("agent", String(128), nullable=False, default=""),
    Column("include_memory", Boolean, nullable=False, default=False),
    Column("quiesce", String(16), nullable=False),
    Column("consistency", String(16), nullable=False),
    Column("groups_json", Text, nullable=False, default="[]"),
    Column("parent_id", String(64), nullable=False, default=""),
    Column("is_current", Boolean, nullable=False, default=False),
    Column("freeze_start", Float, nullable=True),
    Column("freeze_seconds", Float, nullable=True),
    Column("error_code", Integer, nullable=True),
    Column("error_message", Text, nullable=True),
    Column("error_reason", String(64), nullable=True),
    Column("warnings_json", Text, nullable=False, default="[]"),
    Column("parameters_json", Text, nullable=False, default="{}"),
    # Groups whose DeleteVMSnapshot has not been confirmed yet (compensation or
    # expunge); the reconciler retries them until the list is empty.
    Column("cleanup_json", Text, nullable=False, default="[]"),
    # Why a READY snapshot cannot restore any more (objects found gone by the
    # reconciler), "" while every object it needs was seen.
    Column("missing", Text, nullable=False, default=""),
    # The project of its VM when it was taken (issue 12): a caller sees it only
    # in its projects, even after the VM id is reused in another project.
    Column("project", String(128), nullable=False, default=""),
    # The snapshot policy that made it ("" for a CreateVMSnapshot call): its
    # retention deletes only rows with its own id (docs/design.md, "Policies").
    Column("policy_id", String(64), nullable=False, default=""),
    Column("policy_name", String(64), nullable=False, default=""),
    Column("create_time", Float, nullable=False),
    Column("update_time", Float, nullable=False),
    Index("ix_vm_snapshots_vm_seq", "vm_id", "seq"),
    Index("ix_vm_snapshots_vm_name", "vm_id", "name"),
    Index("ix_vm_snapshots_state", "state"),
    Index("ix_vm_snapshots_parent", "parent_id"),
    Index("ix_vm_snapshots_policy", "policy_id", "vm_id"),
    # A name is taken by a snapshot that exists or is being made or reverted. The
    # predicate holds only states a row never re-enters once it left them (ERROR
    # and EXPUNGING rows keep their names out of it), so no move can violate it.
    Index(
        "ux_vm_snapshots_live_name",
        "vm_id",
        "name",
        unique=True,
        sqlite_where=text(LIVE_NAME_PREDICATE),
        postgresql_where=text(LIVE_NAME_PREDICATE),
    ),
    Index(
        "ux_vm_snapshots_current",
        "vm_id",
        unique=True,
        sqlite_where=text(CURRENT_PREDICATE),
        postgresql_where=text(CURRENT_PREDICATE),
    ),
    # The state too (0007): the live count (admission) reads the index alone.
    Index(
        "ix_vm_snapshots_vm_shown",
        "vm_id",
        "seq",
        "state",
        sqlite_where=text(SHOWN_PREDICATE),
        postgresql_where=text(SHOWN_PREDICATE),
    ),
)

operations = Table(
    "operations",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("type", String(16), nullable=False),
    Column("vm_id", String(128), nullable=False),
    Column("vm_snapshot_id", String(64), nullable=False),
    Column("request_id", String(128), nullable=False, unique=True),
    Column("done", Boolean, nullable=False, default=False),
    Column("error_code", Integer, nullable=True),
    Column("error_message", Text, nullable=True),
    Column("error_reason", String(64), nullable=True),
    Column("progress", Integer, nullable=False, default=0),
    Column("step", String(255), nullable=False, default=""),
    # The write-ahead journal: every side effect is recorded here before it is
    # made (freeze token, groups called, native snapshot id), so that recovery
    # knows what to undo.
    Column("journal_json", Text, nullable=False, default="{}"),
    Column("params_json", Text, nullable=False, default="{}"),
    Column("owner", String(128), nullable=False, default=""),
    Column("project", String(128), nullable=False, default=""),
    Column("create_time", Float, nullable=False),
    Column("update_time", Float, nullable=False),
    Index("ix_operations_vm_seq", "vm_id", "seq"),
    Index("ix_operations_done", "done"),
)

# One row per VM with a mutating operation in flight: which host replica owns
# it and until when. A replica that finds an expired lease may take over.
vm_leases = Table(
    "vm_leases",
    metadata,
    Column("vm_id", String(128), primary_key=True),
    Column("owner", String(128), nullable=False),
    Column("operation_id", String(64), nullable=False),
    Column("expire_time", Float, nullable=False),
    # Fencing token: grows by one on every acquisition, so a holder that lost its
    # lease (expired, taken over) is refused on its next write.
    Column("fence", Integer, nullable=False, default=0),
)

# Host replicas alive: each renews its row (heartbeat) at a third of the lease; an
# operation whose owner's row ran out is taken over by another replica.
replicas = Table(
    "replicas",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("expire_time", Float, nullable=False),
    Column("start_time", Float, nullable=False),
)

# The states a revert keeps so that it can be undone (an array's undo snapshot,
# or a safety snapshot the host takes): journaled here *before* they exist, and
# removed only once their owner confirmed the delete. The reconciler counts
# their ids as live while a row exists.
kept_states = Table(
    "kept_states",
    metadata,
    Column("id", String(128), primary_key=True),  # the id the object carries on its owner
    Column("owner", String(128), primary_key=True),  # driver or agent name
    Column("kind", String(16), nullable=False),  # GroupKind name
    Column("operation_id", String(64), nullable=False),
    Column("vm_id", String(128), nullable=False),
    Column("vm_snapshot_id", String(64), nullable=False),  # the revert's target
    Column("result_json", Text, nullable=False, default=""),  # the owner's result once known
    Column("create_time", Float, nullable=False),
    Index("ix_kept_states_operation", "operation_id"),
)

# Which driver a volume belongs to, from the last plan that gave it to one: a
# volume whose owner is unreachable fails the take instead of silently going
# to another strategy (docs/design.md, "Planning").
volume_owners = Table(
    "volume_owners",
    metadata,
    Column("locator", String(1024), primary_key=True),
    Column("driver", String(128), nullable=False),
    Column("update_time", Float, nullable=False),
)

# What the reconciler found and did (kept for operators: `vmsnap reconcile`).
findings = Table(
    "findings",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False),
    Column("kind", String(32), nullable=False),  # e.g. ORPHAN, MISSING, FROZEN
    Column("peer", String(128), nullable=False, default=""),  # driver or agent name
    Column("object_id", String(255), nullable=False, default=""),
    Column("vm_id", String(128), nullable=False, default=""),
    Column("vm_snapshot_id", String(64), nullable=False, default=""),
    Column("action", String(32), nullable=False, default=""),  # DELETED, MARKED, FAILED, …
    Column("detail", Text, nullable=False, default=""),
    Index("ix_findings_time", "time"),
)

# Drivers and agents registered through the API (config entries are re-read on
# every start and need no row).
registrations = Table(
    "registrations",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("address", String(1024), primary_key=True),
    Column("name", String(128), nullable=False, default=""),
    Column("sort_order", Integer, nullable=False, default=0),
    Column("tls_json", Text, nullable=False, default="{}"),
)

# The project each VM belongs to, set when it is defined or adopted through the
# API (issue 12). A VM without a row belongs to no project: only admins see it.
vm_projects = Table(
    "vm_projects",
    metadata,
    Column("vm_id", String(128), primary_key=True),
    Column("project", String(128), nullable=False),
    Column("update_time", Float, nullable=False),
    Index("ix_vm_projects_project", "project"),
)

# Every mutating call and every refused call of the control API (issue 12),
# written through the store's durable write path before the call answers.
audit_records = Table(
    "audit_records",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False),
    Column("principal", String(255), nullable=False, default=""),
    Column("via", String(16), nullable=False, default=""),
    Column("project", String(128), nullable=False, default=""),
    Column("method", String(64), nullable=False),
    Column("target", String(1024), nullable=False, default=""),
    Column("request_id", String(128), nullable=False, default=""),
    Column("result", String(32), nullable=False),
    Column("refused", Boolean, nullable=False, default=False),
    Column("detail", Text, nullable=False, default=""),
    Column("peer", String(255), nullable=False, default=""),
    Index("ix_audit_principal", "principal", "seq"),
    Index("ix_audit_project", "project", "seq"),
)

# Snapshot policies (docs/design.md, "Policies"). ``next_run`` is the claim: a run
# is taken by the one compare-and-set that moves it forward (NULL while paused).
policies = Table(
    "policies",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("vm_id", String(128), nullable=False, default=""),
    Column("selector_json", Text, nullable=False, default="{}"),
    Column("schedule", String(128), nullable=False),
    Column("time_zone", String(64), nullable=False, default=""),
    Column("keep_last", Integer, nullable=False, default=0),
    Column("keep_daily", Integer, nullable=False, default=0),
    Column("keep_weekly", Integer, nullable=False, default=0),
    Column("quiesce", String(16), nullable=False),
    Column("paused", Boolean, nullable=False, default=False),
    Column("next_run", Float, nullable=True),
    Column("last_run", Float, nullable=True),
    Column("create_time", Float, nullable=False),
    Column("update_time", Float, nullable=False),
)

# One VM's part of one policy run: inserted in the claim's transaction (so a crash
# after the claim leaves a PENDING row that the next leader finishes), then the
# create operation's id and outcome. ``request_id`` is the create's, derived from
# policy, VM and scheduled time: unique, so a run is never made twice.
policy_runs = Table(
    "policy_runs",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("policy_id", String(64), nullable=False),
    Column("vm_id", String(128), nullable=False),
    Column("scheduled", Float, nullable=False),
    Column("request_id", String(128), nullable=False, unique=True),
    Column("outcome", String(16), nullable=False),  # PENDING, RUNNING, SUCCEEDED, FAILED
    Column("operation_id", String(64), nullable=False, default=""),
    Column("vm_snapshot_id", String(64), nullable=False, default=""),
    Column("error_message", Text, nullable=False, default=""),
    Column("missed", Integer, nullable=False, default=0),
    Column("deleted_json", Text, nullable=False, default="[]"),
    Column("create_time", Float, nullable=False),
    Column("update_time", Float, nullable=False),
    Index("ix_policy_runs_policy_seq", "policy_id", "seq"),
    Index("ix_policy_runs_outcome", "outcome"),
)

# VM labels, kept by the host (agents know nothing of them); policy selectors
# match them.
vm_labels = Table(
    "vm_labels",
    metadata,
    Column("vm_id", String(128), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("value", String(64), nullable=False, default=""),
    Index("ix_vm_labels_key_value", "key", "value"),
)
