"""What a process imports at start, checked by module name (not by time, which a
busy machine makes meaningless): the tests start ``vmsnap``, hosts, drivers and
agents hundreds of times, and a heavy import that creeps back costs every start.

Each check runs a fresh interpreter: ``sys.modules`` of the test process holds
whatever other tests imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

#: Imported by no ``vmsnap`` command that does not use them: the database layer
#: (the host's), JWT checks (the host's, when configured), the metrics and
#: tracing exporters, the gRPC server side (drivers', agents') and the stack.
NOT_FOR_THE_CLI = (
    "sqlalchemy",
    "alembic",
    "jwt",
    "cryptography",
    "prometheus_client",
    "opentelemetry",
    "vmsnap_stack",
    "vmsnap_sdk._server",
    "vmsnap_sdk._agent_client",
    "vmsnap_sdk.metrics",
)


def _modules(code: str, *args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def _under(modules: set[str], roots: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == r or m.startswith(f"{r}.") for r in roots))


_CLI = """
import json, sys
from vmsnap_host.cli import main
sys.argv = ["vmsnap", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print()
print(json.dumps(sorted(sys.modules)))
"""


def test_vmsnap_help_imports_no_database_jwt_metrics_or_server() -> None:
    modules = _modules(_CLI, "--help")
    assert "vmsnap_host.cli._snapshot" in modules  # it did build the whole command tree
    assert _under(modules, NOT_FOR_THE_CLI) == []


def test_a_vmsnap_command_imports_only_the_client_side() -> None:
    # No host answers there: the command fails after importing all it needs.
    modules = _modules(_CLI, "vm", "list", "--host", "unix:///nonexistent/vmsnap.sock")
    assert "vmsnap_host.client._client" in modules
    assert _under(modules, NOT_FOR_THE_CLI) == []


def test_importing_the_sdk_imports_none_of_its_parts() -> None:
    modules = _modules("import json, sys, vmsnap_sdk; print(json.dumps(sorted(sys.modules)))")
    assert _under(modules, ("grpc", "google.protobuf", "prometheus_client")) == []
    assert [m for m in modules if m.startswith("vmsnap_sdk.")] == []


def test_a_host_reopening_its_catalog_does_not_import_alembic(tmp_path: Path) -> None:
    code = """
import json, sys
from vmsnap_host.store import Store
Store.open_sqlite(sys.argv[1]).close()
print(json.dumps(sorted(sys.modules)))
"""
    catalog = str(tmp_path / "c.db")
    assert "alembic" in _modules(code, catalog)  # a new catalog is migrated
    assert _under(_modules(code, catalog), ("alembic",)) == []
