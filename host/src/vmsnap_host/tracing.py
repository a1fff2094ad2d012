"""Traces of the host process (docs/design.md, "Live events, cancel and traces").

Off unless the standard ``OTEL_*`` environment asks (:mod:`vmsnap_sdk.tracing`
decides and instruments every gRPC server and client). The host adds one span
per operation's run (``vmsnap.take``, ``vmsnap.revert``, ``vmsnap.delete``),
child of the request that admitted it (the task inherits the request's
context): the agent's and drivers' calls of a take are its children, so one
take is one trace across the processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from vmsnap_host.model import OperationRecord, OperationType
from vmsnap_sdk import tracing

_NAMES = {
    OperationType.CREATE: "take",
    OperationType.REVERT: "revert",
    OperationType.DELETE: "delete",
}


def setup() -> bool:
    """Start tracing when the environment asks; before any server or channel."""
    return tracing.setup("vmsnap-host")


@contextlib.contextmanager
def operation_span(op: OperationRecord, *, resume: bool) -> Iterator[None]:
    """A span around one run of an operation (nothing at all while tracing is off)."""
    if not tracing.enabled():
        yield
        return
    from opentelemetry import trace

    tracer = trace.get_tracer("vmsnap.host")
    name = f"vmsnap.{_NAMES.get(op.type, op.type.name.lower())}"
    with tracer.start_as_current_span(
        name,
        attributes={
            "vmsnap.operation_id": op.id,
            "vmsnap.vm_id": op.vm_id,
            "vmsnap.vm_snapshot_id": op.vm_snapshot_id,
            "vmsnap.resume": resume,
        },
    ):
        yield


__all__ = ["operation_span", "setup"]
