"""Typed client of the vmsnap host's control API (vmsnap.host.v1.VMSnapshotService).

    async with HostClient.connect() as host:
        op = await host.create_vm_snapshot("vm-1", "before-upgrade")
        op = await host.wait(op.id, timeout=300, on_progress=print)
        if op.error:
            raise op.error.exception()

:class:`SyncHostClient` has the same methods, blocking, for scripts and threads::

    with SyncHostClient.connect() as host:
        op = host.wait(host.create_vm_snapshot("vm-1", "nightly").id)

Every RPC is an async method returning frozen dataclasses; failures raise the
classes of :mod:`vmsnap_sdk.errors`. Without an address, the client finds the
local stack: ``$VMSNAP_HOST``, else ``unix://$VMSNAP_HOME/run/host.sock``
(``VMSNAP_HOME`` defaults to ``~/.vmsnap``). Credentials for a host with
authentication on: ``token=`` / ``token_file=``, else ``$VMSNAP_TOKEN_FILE``,
else the local stack's admin token that ``vmsnap up --auth`` wrote.
"""

from vmsnap_host.client._address import (
    default_address,
    default_token_file,
    host_socket,
    token_file,
    vmsnap_home,
)
from vmsnap_host.client._client import HostClient, read_token
from vmsnap_host.client._sync import SyncHostClient
from vmsnap_host.client._types import (
    AgentStatus,
    AuditRecord,
    DiscoveredSet,
    DiscoveredVolume,
    Discovery,
    DiskRanges,
    DriverStatus,
    Failure,
    Finding,
    FreezeInfo,
    GroupKind,
    GroupVolume,
    Health,
    LabeledVM,
    Operation,
    OperationType,
    Page,
    PolicyRun,
    QuiescePolicy,
    ReconcileReport,
    SnapshotGroup,
    SnapshotPolicy,
    UndefineResult,
    VMSnapshot,
    VMSnapshotState,
)
from vmsnap_sdk import VM, ClientTLS, Consistency, VMState, Volume
from vmsnap_sdk.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TransientError,
    Unavailable,
    Unimplemented,
    Unknown,
    VMSnapError,
)

__all__ = [
    "Aborted",
    "AgentStatus",
    "AlreadyExists",
    "AuditRecord",
    "Cancelled",
    "ClientTLS",
    "Consistency",
    "DeadlineExceeded",
    "DiscoveredSet",
    "DiscoveredVolume",
    "Discovery",
    "DiskRanges",
    "DriverStatus",
    "FailedPrecondition",
    "Failure",
    "Finding",
    "FreezeInfo",
    "GroupKind",
    "GroupVolume",
    "Health",
    "HostClient",
    "Internal",
    "InvalidArgument",
    "LabeledVM",
    "NotFound",
    "Operation",
    "OperationType",
    "Page",
    "PolicyRun",
    "QuiescePolicy",
    "ReconcileReport",
    "ResourceExhausted",
    "SnapshotGroup",
    "SnapshotPolicy",
    "SyncHostClient",
    "TransientError",
    "Unavailable",
    "UndefineResult",
    "Unimplemented",
    "Unknown",
    "VM",
    "VMSnapError",
    "VMSnapshot",
    "VMSnapshotState",
    "VMState",
    "Volume",
    "default_address",
    "default_token_file",
    "host_socket",
    "read_token",
    "token_file",
    "vmsnap_home",
]
