"""OpenTelemetry traces for every vmsnap process: off unless the standard
``OTEL_*`` environment asks for them.

On when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``,
``vmsnap_jsonl``, or any installed under the ``opentelemetry_traces_exporter``
entry point) or an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``: exporter ``otlp``). ``none`` or
``OTEL_SDK_DISABLED=true`` keeps it off. The rest is the SDK's own standard
environment (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``, the OTLP exporter's settings).

When on, every gRPC server and client of the process is instrumented
(opentelemetry-instrumentation-grpc): a call carries its trace context in
its metadata (W3C ``traceparent``), so one take is one trace across the host,
the agent and the drivers. Nothing is imported while off: a process that does
not trace pays nothing. docs/design.md, "Live events, cancel and traces".
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("vmsnap.tracing")

#: The file the ``vmsnap_jsonl`` exporter appends spans to, one JSON object a line.
JSONL_PATH_ENV = "VMSNAP_TRACES_FILE"

_started = False


def _exporter_names() -> list[str]:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [
        n.strip().lower()
        for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if n.strip()
    ]
    if not names and (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        names = ["otlp"]
    return [n for n in names if n != "none"]


def enabled() -> bool:
    """Whether the environment asks for traces."""
    return bool(_exporter_names())


def setup(service_name: str) -> bool:
    """Start tracing for this process when the environment asks (idempotent);
    call before any gRPC server or channel is made. Returns whether it is on.
    A missing exporter package is one error line, never a failed start."""
    global _started
    if _started:
        return True
    names = _exporter_names()
    if not names:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.grpc import (
            GrpcAioInstrumentorClient,
            GrpcAioInstrumentorServer,
            GrpcInstrumentorClient,
        )
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.error(
            "traces asked for (OTEL_*) but OpenTelemetry is not installed (%s): "
            "pip install opentelemetry-sdk opentelemetry-instrumentation-grpc",
            exc.name,
        )
        return False
    exporters = [e for e in (_exporter(n) for n in names) if e is not None]
    if not exporters:
        return False
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; ours is
    # the default only.
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    # The instrumentation package ships no type hints.
    GrpcAioInstrumentorServer().instrument()  # type: ignore[no-untyped-call]
    GrpcAioInstrumentorClient().instrument()  # type: ignore[no-untyped-call]
    GrpcInstrumentorClient().instrument()  # type: ignore[no-untyped-call]
    # Spans still batched are sent when the process ends normally (SIGTERM: the
    # servers' graceful stop returns through here).
    atexit.register(provider.shutdown)
    _started = True
    log.info("traces on", extra={"fields": {"exporters": ",".join(names)}})
    return True


def flush() -> None:
    """Send the spans batched so far (before a process ends on its own terms)."""
    if not _started:
        return
    from opentelemetry import trace

    provider: Any = trace.get_tracer_provider()
    if hasattr(provider, "force_flush"):
        provider.force_flush()


def _exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # stderr: a server's first stdout line is its announcement (address, metrics).
        return ConsoleSpanExporter(out=sys.stderr)
    if name == "vmsnap_jsonl":
        path = os.environ.get(JSONL_PATH_ENV, "")
        if not path:
            log.error("OTEL_TRACES_EXPORTER=vmsnap_jsonl needs %s=FILE", JSONL_PATH_ENV)
            return None
        return JsonLinesExporter(path)
    if name == "otlp":
        protocol = os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
        )
        transport = "http" if protocol.startswith("http") else "grpc"
        try:
            # Optional (not a dependency): imported by name only when asked for.
            module = importlib.import_module(
                f"opentelemetry.exporter.otlp.proto.{transport}.trace_exporter"
            )
        except ImportError:
            log.error(
                "OTEL_TRACES_EXPORTER=otlp: the OTLP exporter is not installed: pip install "
                "opentelemetry-exporter-otlp (its protobuf pin may need to match ours)"
            )
            return None
        return module.OTLPSpanExporter()
    from importlib.metadata import entry_points

    for entry in entry_points(group="opentelemetry_traces_exporter", name=name):
        return entry.load()()
    log.error("OTEL_TRACES_EXPORTER names %r: no such exporter is installed", name)
    return None


class JsonLinesExporter:
    """Appends finished spans to a file, one JSON object a line (several processes
    may share the file: each batch is one ``write`` to a file opened for append).
    For tests and for a machine without a collector."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = "".join(json.dumps(_span(s), sort_keys=True) + "\n" for s in spans)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, lines.encode())
            finally:
                os.close(fd)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _span(span: Any) -> dict[str, Any]:
    context = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else "",
        "kind": span.kind.name,
        "service": span.resource.attributes.get("service.name", ""),
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "attributes": {k: v for k, v in (span.attributes or {}).items() if _plain(v)},
    }


def _plain(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


__all__ = ["JSONL_PATH_ENV", "JsonLinesExporter", "enabled", "flush", "setup"]
