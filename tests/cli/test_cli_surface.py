"""The CLI's surface, in process (no stack): global options anywhere, help without
Python types and with examples, hints in the CLI's words, exit codes, short ids."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from rich.console import Console

from tests.support.procs import ROOT
from vmsnap_host.cli import _app
from vmsnap_host.cli import _output as out
from vmsnap_host.cli._argv import hoist
from vmsnap_host.cli._common import EXIT_CODES, Exit, fail
from vmsnap_host.cli._hints import COMMANDS, FLAGS, cli_words
from vmsnap_host.cli._snapshot import _finish
from vmsnap_host.cli._volume import parse_size
from vmsnap_host.client import Operation, OperationType, VMSnapshot, VMSnapshotState
from vmsnap_stack import Layout
from vmsnap_stack._table import build

_ROOT: list[object] = []


def command() -> object:
    """The Click tree, built once (Typer builds it in seconds on a busy machine)."""
    if not _ROOT:
        _ROOT.append(_app.command())
    return _ROOT[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["snapshot", "list", "web", "--host", "unix:///h.sock"],
            ["--host", "unix:///h.sock", "snapshot", "list", "web"],
        ),
        (["vm", "list", "--host=unix:///h.sock"], ["--host=unix:///h.sock", "vm", "list"]),
        (["vm", "list", "-o", "wide", "--no-trunc"], ["-o", "wide", "--no-trunc", "vm", "list"]),
        (["operations", "list", "-owide"], ["-owide", "operations", "list"]),
        # A command's own --json stays with it; a command without one lends it to the root.
        (["snapshot", "list", "--json"], ["snapshot", "list", "--json"]),
        (["drivers", "remove", "x", "--json"], ["--json", "drivers", "remove", "x"]),
        # An option's value is never taken for an option.
        (
            ["snapshot", "create", "web", "n", "--description", "--host", "--host", "h"],
            ["--host", "h", "snapshot", "create", "web", "n", "--description", "--host"],
        ),
        (["vm", "show", "--", "--host"], ["vm", "show", "--", "--host"]),
    ],
)
def test_global_options_are_hoisted_to_the_front(args: list[str], expected: list[str]) -> None:
    assert hoist(args, command()) == expected


def _leaves(cmd: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    subs = getattr(cmd, "commands", None)
    if not subs:
        return [path]
    return [path] + [p for name, sub in subs.items() for p in _leaves(sub, (*path, name))]


def _help(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        command().main(args=[*args, "-h"], prog_name="vmsnap")  # type: ignore[attr-defined]
    assert stopped.value.code == 0
    return capsys.readouterr().out


def test_every_help_is_readable_and_minus_h_works(capsys: pytest.CaptureFixture[str]) -> None:
    paths = _leaves(command())
    assert ("volume", "create") in paths and ("snapshot", "list") in paths
    for path in paths:
        text = _help(list(path), capsys)
        assert "Usage: vmsnap" in text, path
        for python_type in ("<bool>", "<str>", "<int>", "<float>", "<list", "<path>"):
            assert python_type not in text, (path, python_type, text)
        if len(path) == 1 and path[0] not in ("up", "demo", "reconcile"):
            assert "Example" in text, (path, text)  # every group shows one
    root = _help([], capsys)
    assert "Exit codes" in root and "--version" in root and "--install-completion" in root


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        command().main(args=["--version"], prog_name="vmsnap")  # type: ignore[attr-defined]
    assert stopped.value.code == 0
    assert re.fullmatch(r"vmsnap \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


def test_exit_codes_are_one_table_in_help_and_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| (\d+) \| ([^|]+) \|$", readme, flags=re.M))
    assert {int(code) for code in rows} == {int(code) for code, _ in EXIT_CODES}
    for code, text in EXIT_CODES:
        # The same meaning, first words alike, in both places.
        assert rows[str(int(code))].split(":")[0] == text.split(":")[0], code


def _operation(**changes: object) -> Operation:
    fields: dict[str, object] = {
        "id": "a" * 32,
        "type": OperationType.CREATE,
        "vm_id": "web",
        "vm_snapshot_id": "b" * 32,
        "done": True,
    }
    fields.update(changes)
    return Operation(**fields)  # type: ignore[arg-type]


def test_an_operation_still_running_exits_6_and_says_how_to_follow_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(typer.Exit) as stopped:
        _finish(_operation(done=False, step="taking"), json_=False)
    assert stopped.value.exit_code == Exit.STILL_RUNNING == 6
    assert f"vmsnap operations show {'a' * 32}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("host_said", "cli_says"),
    [
        (
            "VM web is RUNNING; reverting a disk-only snapshot needs it STOPPED: stop it first "
            "(StopVM) or pass stop_vm=true",
            "VM web is RUNNING; reverting a disk-only snapshot needs it STOPPED: stop it first "
            "(`vmsnap vm stop`) or pass --stop-vm",
        ),
        (
            "VM x is not known to any registered agent; check the id (ListVMs) or define it "
            "(DefineVM)",
            "VM x is not known to any registered agent; check the id (`vmsnap vm list`) or "
            "define it (`vmsnap vm define`)",
        ),
        (
            "delete them first, or undefine with delete_snapshots (--delete-snapshots)",
            "delete them first, or undefine with --delete-snapshots",
        ),
        (
            "no hypervisor agent is registered; register one (RegisterAgent or the [[agents]]",
            "no hypervisor agent is registered; register one (`vmsnap agents register` or the "
            "[[agents]]",
        ),
        ("list them with ListOperations", "list them with `vmsnap operations list`"),
        # What a driver's call did keeps the call's name.
        (
            "GetVMSnapshot on driver com.acme failed: UNAVAILABLE",
            "GetVMSnapshot on driver com.acme failed: UNAVAILABLE",
        ),
    ],
)
def test_host_hints_are_shown_as_commands_and_flags(host_said: str, cli_says: str) -> None:
    assert cli_words(host_said) == cli_says


def test_every_hint_in_the_hosts_sources_has_a_cli_rewrite() -> None:
    """A hint added to the host later (``(SomeRPC)``, ``field=value``) must get a rewrite."""
    proto = (ROOT / "proto/vmsnap/host/v1/host.proto").read_text()
    rpcs = set(re.findall(r"^\s*rpc (\w+)\(", proto, flags=re.M))
    sources = [
        p
        for p in (ROOT / "host/src/vmsnap_host").rglob("*.py")
        if "cli" not in p.parts and "client" not in p.parts
    ]
    missing = set()
    for path in sources:
        for literal in re.findall(r'"([^"\n]*)"', path.read_text()):
            for rpc in re.findall(r"(?:\(|with )([A-Z]\w+)\b", literal):
                if rpc in rpcs and rpc not in COMMANDS:
                    missing.add(f"{path.name}: {rpc}")
            for field in re.findall(r"\b[a-z]+_[a-z_]+=(?:true|false)\b", literal):
                if field not in FLAGS:
                    missing.add(f"{path.name}: {field}")
            rewritten = cli_words(literal)
            for field in ("stop_vm=", "delete_snapshots (", "(StopVM)", "(ListVMs)"):
                assert field not in rewritten, (path, literal)
    assert not missing, sorted(missing)


def _snapshot(snapshot_id: str) -> VMSnapshot:
    return VMSnapshot(
        id=snapshot_id,
        vm_id="web",
        name="nightly",
        state=VMSnapshotState.READY,
        create_time=datetime.now(UTC),
    )


def test_tables_cut_ids_on_a_terminal_only() -> None:
    full = "0123456789abcdef0123456789abcdef"
    wide = Console(width=60, force_terminal=False, record=True)
    wide.print(out.snapshot_table([_snapshot(full)], full=True))
    assert full in wide.export_text()
    short = Console(width=200, record=True)
    short.print(out.snapshot_table([_snapshot(full)], full=False))
    text = short.export_text()
    assert full[:12] in text and full not in text


def test_sizes() -> None:
    assert parse_size("16MiB") == 16 << 20
    assert parse_size("1G") == 1 << 30
    assert parse_size("4096") == 4096
    with pytest.raises(typer.Exit) as stopped:
        parse_size("lots")
    assert stopped.value.exit_code == Exit.USAGE


def test_readme_names_no_placeholder_the_shell_cannot_run() -> None:
    block = (ROOT / "README.md").read_text().split("<!-- walkthrough -->")[1].split("```")[1]
    assert "SNAPSHOT_ID" not in block and "ID" not in re.sub(r"--\S+", "", block).split()




def test_an_error_is_printed_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as stopped:
        fail("register one (or the [[agents]] of the config file) [bold]", Exit.REFUSED)
    assert stopped.value.exit_code == 4
    err = capsys.readouterr().err
    assert "[[agents]] of the config file) [bold]" in err


def test_the_stack_gives_every_grpc_process_a_kept_metrics_port(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    first = {c.name: c for c in build(layout, "sim")}
    serving = {n for n, c in first.items() if c.role in ("storage driver", "hypervisor agent", "host")}
    assert serving == {"driver-element", "driver-ontap", "agent", "host"}
    for name, component in first.items():
        if name in serving:
            port = component.metrics.removeprefix("http://127.0.0.1:").removesuffix("/metrics")
            assert component.current_command()[-2:] == ("--metrics-listen", f"127.0.0.1:{port}")
        else:
            assert not component.metrics
            assert "--metrics-listen" not in component.current_command()
    again = {c.name: c.metrics for c in build(layout, "sim")}
    assert again == {n: c.metrics for n, c in first.items()}  # the same ports at the next start
