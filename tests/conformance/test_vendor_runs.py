"""How a vendor's CI runs the suite: usage errors, an unreachable driver, strictness
flags, pipes, JUnit and the ``[pytest]`` extra (issue 13, deliverable 6)."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

from tests.support.procs import ROOT

CLI = [sys.executable, "-m", "vmsnap_sdk.conformance.cli"]
PYTEST_SUITE = [
    sys.executable,
    "-m",
    "pytest",
    "--pyargs",
    "vmsnap_sdk.conformance.pytest_suite",
    "-q",
    "-p",
    "no:cacheprovider",
    # The repository's own pytest configuration (xdist, timeouts) is not a vendor's.
    "-c",
    "/dev/null",
]


def run(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_pytest_suite_without_an_endpoint_is_a_usage_error(tmp_path: Path) -> None:
    # Before: 98 skipped and exit 0, so a CI job went green having tested nothing.
    done = run(PYTEST_SUITE, cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 4, out  # pytest's usage error
    assert "--vmsnap-endpoint" in out
    assert "skipped" not in out


def test_pytest_suite_against_an_unreachable_driver_fails_once_at_once(tmp_path: Path) -> None:
    address = f"unix://{tmp_path}/nobody.sock"
    done = run([*PYTEST_SUITE, "--vmsnap-endpoint", address], cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "no tests ran" in out  # ended at once, before the first check
    assert f"cannot reach the driver at {address}" in out
    # One failure line, not one per check.
    assert out.count("cannot reach") == 1, out
    assert not re.search(r"^FAILED ", out, re.MULTILINE), out


def test_cli_against_an_unreachable_driver_says_so_in_one_line(tmp_path: Path) -> None:
    address = f"unix://{tmp_path}/nobody.sock"
    done = run([*CLI, address])
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot reach the driver at {address}" in done.stdout
    assert "FAIL  " not in done.stdout
    assert len(done.stdout.splitlines()) <= 3, done.stdout


def test_cli_fail_on_skip_turns_skips_into_failures(
    example_driver: str, example_params: Path
) -> None:
    # The example driver has no fixture: the data checks of take are skipped.
    lenient = run([*CLI, example_driver, "--only", "take", "--quiet"])
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    assert "skipped" in lenient.stdout and " 0 skipped" not in lenient.stdout
    strict = run([*CLI, example_driver, "--only", "take", "--fail-on-skip"])
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "0 skipped" in strict.stdout.splitlines()[-1]
    assert "(--fail-on-skip)" in strict.stdout


def test_cli_require_fails_when_the_driver_lacks_the_capability(
    example_driver: str, example_params: Path
) -> None:
    done = run([*CLI, example_driver, "--only", "identity", "--require", "CONFORMANCE_FIXTURE"])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "does not advertise CAPABILITY_CONFORMANCE_FIXTURE" in done.stdout
    assert "--require" in done.stdout
    kept = run([*CLI, example_driver, "--only", "identity", "--require", "CAPABILITY_LIST"])
    assert kept.returncode == 0, kept.stdout + kept.stderr
    unknown = run([*CLI, example_driver, "--require", "TELEPORT"])
    assert unknown.returncode == 2
    assert "TELEPORT" in unknown.stderr and "REVERT_UNDO" in unknown.stderr


def test_pytest_suite_fail_on_skip_and_require(example_driver: str, tmp_path: Path) -> None:
    base = [*PYTEST_SUITE, "--vmsnap-endpoint", example_driver, "--vmsnap-only", "take"]
    lenient = run(base, cwd=tmp_path)
    assert lenient.returncode == 0, lenient.stdout
    assert "skipped" in lenient.stdout
    strict = run([*base, "--vmsnap-fail-on-skip"], cwd=tmp_path)
    assert strict.returncode == 1, strict.stdout
    assert "skipped" not in strict.stdout.splitlines()[-1]
    required = run(
        [*base, "--vmsnap-require", "CONFORMANCE_FIXTURE", "--vmsnap-only", "identity"],
        cwd=tmp_path,
    )
    assert required.returncode == 1, required.stdout
    assert "CAPABILITY_CONFORMANCE_FIXTURE" in required.stdout


def test_list_into_a_closed_pipe_ends_quietly() -> None:
    script = Path(sys.executable).parent / "vmsnap-conformance"
    with subprocess.Popen(
        [str(script), "--list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # like `| head` that has read what it wanted
        err = proc.stderr.read().decode()
        code = proc.wait(30)
    assert code in (0, 141), err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_pytest_junit_classnames_are_the_categories(
    example_driver: str, example_params: Path, tmp_path: Path
) -> None:
    report = tmp_path / "junit.xml"
    done = run(
        [
            *PYTEST_SUITE,
            "--vmsnap-endpoint",
            example_driver,
            "--vmsnap-params",
            str(example_params),
            "--vmsnap-only",
            "identity,take",
            f"--junitxml={report}",
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout, done.stdout
    cases = ET.parse(report).getroot().iter("testcase")
    names = {(c.get("classname"), c.get("name")) for c in cases}
    assert names
    for classname, name in names:
        assert name is not None and classname is not None
        category = name.split("[", 1)[1].split(".", 1)[0]
        assert classname == f"vmsnap.conformance.{category}", (classname, name)
    assert {c for c, _ in names} == {"vmsnap.conformance.identity", "vmsnap.conformance.take"}


def test_the_pytest_extra_brings_pytest() -> None:
    meta = metadata.metadata("vmsnap-sdk")
    assert "pytest" in (meta.get_all("Provides-Extra") or [])
    requires = metadata.requires("vmsnap-sdk") or []
    assert any(r.startswith("pytest") and 'extra == "pytest"' in r for r in requires), requires
