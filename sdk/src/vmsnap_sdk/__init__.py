"""vmsnap SDK: write a storage driver or a hypervisor agent for vmsnap.

Subclass :class:`StorageDriver` (or :class:`HypervisorAgent`), return the
domain types below, raise the errors of :mod:`vmsnap_sdk.errors`, and serve it
with :func:`run_driver` / :func:`serve_driver`. The host reaches a remote driver
through :class:`DriverClient`, which implements the same interface.

:mod:`vmsnap_sdk.limits` holds the contract's size limits (handles, metadata,
labels, reasons, messages): the SDK refuses to send an answer over them, and
the host refuses to store one.
"""

from vmsnap_sdk._agent_client import AgentClient
from vmsnap_sdk._context import CallContext, current_call
from vmsnap_sdk._driver_client import DriverClient
from vmsnap_sdk._logging import configure_logging
from vmsnap_sdk._server import Server
from vmsnap_sdk._tls import ClientTLS, ServerTLS, open_channel
from vmsnap_sdk._types import (
    VM,
    AgentInfo,
    Capability,
    CloneRequest,
    CloneTarget,
    Consistency,
    DriverInfo,
    Limits,
    MemoryState,
    NativeSnapshot,
    Operation,
    Page,
    Priority,
    ProbeResult,
    QuiesceInfo,
    QuiesceMethod,
    QuiesceResult,
    RevertRequest,
    RevertResult,
    SnapshotPage,
    SnapshotResult,
    TakeRequest,
    UnmanagedPage,
    UnmanagedSnapshot,
    UnquiesceResult,
    VMPage,
    VMState,
    Volume,
    VolumeDecision,
    VolumeSnapshot,
)
from vmsnap_sdk.agent import HypervisorAgent
from vmsnap_sdk.driver import StorageDriver, fixture_disk_name
from vmsnap_sdk.serve import (
    run_agent,
    run_driver,
    serve_agent,
    serve_driver,
    start_agent_server,
    start_driver_server,
)

__version__ = "0.1.0"

#: Contract versions this SDK speaks.
CONTRACT_VERSIONS = ("v1",)

__all__ = [
    "AgentClient",
    "AgentInfo",
    "CONTRACT_VERSIONS",
    "CallContext",
    "Capability",
    "ClientTLS",
    "CloneRequest",
    "CloneTarget",
    "Consistency",
    "DriverClient",
    "DriverInfo",
    "HypervisorAgent",
    "Limits",
    "MemoryState",
    "NativeSnapshot",
    "Operation",
    "Page",
    "Priority",
    "ProbeResult",
    "QuiesceInfo",
    "QuiesceMethod",
    "QuiesceResult",
    "RevertRequest",
    "RevertResult",
    "Server",
    "ServerTLS",
    "SnapshotPage",
    "SnapshotResult",
    "StorageDriver",
    "TakeRequest",
    "UnmanagedPage",
    "UnmanagedSnapshot",
    "UnquiesceResult",
    "VM",
    "VMPage",
    "VMState",
    "Volume",
    "VolumeDecision",
    "VolumeSnapshot",
    "configure_logging",
    "current_call",
    "fixture_disk_name",
    "open_channel",
    "run_agent",
    "run_driver",
    "serve_agent",
    "serve_driver",
    "start_agent_server",
    "start_driver_server",
]
