"""vmsnap SDK: write a storage driver or a hypervisor agent for vmsnap.

Subclass :class:`StorageDriver` (or :class:`HypervisorAgent`), return the
domain types below, raise the errors of :mod:`vmsnap_sdk.errors`, and serve it
with :func:`run_driver` / :func:`serve_driver`. The host reaches a remote driver
through :class:`DriverClient`, which implements the same interface.

:mod:`vmsnap_sdk.limits` holds the contract's size limits (handles, metadata,
labels, reasons, messages): the SDK refuses to send an answer over them, and
the host refuses to store one.
"""

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use (PEP 562): a program that needs one part (the CLI a client,
# a driver its server) does not pay for the others' imports (grpc servers, Prometheus,
# both clients) at every start. Type checkers see the plain imports.
if TYPE_CHECKING:
    from vmsnap_sdk._agent_client import AgentClient
    from vmsnap_sdk._context import (
        CallContext,
        current_call,
    )
    from vmsnap_sdk._driver_client import DriverClient
    from vmsnap_sdk._logging import configure_logging
    from vmsnap_sdk._server import Server
    from vmsnap_sdk._tls import (
        ClientTLS,
        ServerTLS,
        open_channel,
    )
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
        NativeSnapshotAtFreeze,
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
    from vmsnap_sdk.driver import (
        StorageDriver,
        fixture_disk_name,
    )
    from vmsnap_sdk.serve import (
        run_agent,
        run_driver,
        serve_agent,
        serve_driver,
        start_agent_server,
        start_driver_server,
    )

#: Where each public name lives.
_WHERE = {
    "AgentClient": "vmsnap_sdk._agent_client",
    "CallContext": "vmsnap_sdk._context",
    "current_call": "vmsnap_sdk._context",
    "DriverClient": "vmsnap_sdk._driver_client",
    "configure_logging": "vmsnap_sdk._logging",
    "Server": "vmsnap_sdk._server",
    "ClientTLS": "vmsnap_sdk._tls",
    "ServerTLS": "vmsnap_sdk._tls",
    "open_channel": "vmsnap_sdk._tls",
    "VM": "vmsnap_sdk._types",
    "AgentInfo": "vmsnap_sdk._types",
    "Capability": "vmsnap_sdk._types",
    "CloneRequest": "vmsnap_sdk._types",
    "CloneTarget": "vmsnap_sdk._types",
    "Consistency": "vmsnap_sdk._types",
    "DriverInfo": "vmsnap_sdk._types",
    "Limits": "vmsnap_sdk._types",
    "MemoryState": "vmsnap_sdk._types",
    "NativeSnapshot": "vmsnap_sdk._types",
    "NativeSnapshotAtFreeze": "vmsnap_sdk._types",
    "Operation": "vmsnap_sdk._types",
    "Page": "vmsnap_sdk._types",
    "Priority": "vmsnap_sdk._types",
    "ProbeResult": "vmsnap_sdk._types",
    "QuiesceInfo": "vmsnap_sdk._types",
    "QuiesceMethod": "vmsnap_sdk._types",
    "QuiesceResult": "vmsnap_sdk._types",
    "RevertRequest": "vmsnap_sdk._types",
    "RevertResult": "vmsnap_sdk._types",
    "SnapshotPage": "vmsnap_sdk._types",
    "SnapshotResult": "vmsnap_sdk._types",
    "TakeRequest": "vmsnap_sdk._types",
    "UnmanagedPage": "vmsnap_sdk._types",
    "UnmanagedSnapshot": "vmsnap_sdk._types",
    "UnquiesceResult": "vmsnap_sdk._types",
    "VMPage": "vmsnap_sdk._types",
    "VMState": "vmsnap_sdk._types",
    "Volume": "vmsnap_sdk._types",
    "VolumeDecision": "vmsnap_sdk._types",
    "VolumeSnapshot": "vmsnap_sdk._types",
    "HypervisorAgent": "vmsnap_sdk.agent",
    "StorageDriver": "vmsnap_sdk.driver",
    "fixture_disk_name": "vmsnap_sdk.driver",
    "run_agent": "vmsnap_sdk.serve",
    "run_driver": "vmsnap_sdk.serve",
    "serve_agent": "vmsnap_sdk.serve",
    "serve_driver": "vmsnap_sdk.serve",
    "start_agent_server": "vmsnap_sdk.serve",
    "start_driver_server": "vmsnap_sdk.serve",
}

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
    "NativeSnapshotAtFreeze",
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


if not TYPE_CHECKING:  # hidden from mypy: an unknown name stays a type error

    def __getattr__(name: str) -> Any:
        module = _WHERE.get(name)
        if module is None:
            raise AttributeError(f"module 'vmsnap_sdk' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*globals(), *_WHERE])
