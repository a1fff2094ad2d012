"""The README's CLI walkthrough, run verbatim in bash on a fresh ``vmsnap up``.

The block after ``<!-- walkthrough -->`` in README.md is what a new operator
types. Each of its lines runs as written in one bash session (variables carry
from line to line, as in a terminal), with ``vmsnap`` on the PATH and
``VMSNAP_HOME`` the fresh stack's home; every command of every line must exit
0 (``set -e`` for the commands of a ``;`` list, ``$?`` after each line for an
``&&`` list, which ``set -e`` does not see).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.stack_support import Up
from tests.support.procs import ROOT

MARKER = "<!-- walkthrough -->"


def walkthrough_lines(readme: Path = ROOT / "README.md") -> list[str]:
    """The command lines of every fenced block that follows the marker."""
    text = readme.read_text()
    blocks = re.findall(re.escape(MARKER) + r"\s*```sh\n(.*?)```", text, flags=re.S)
    assert blocks, f"README.md has no ```sh block after {MARKER}"
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def script(lines: list[str]) -> str:
    """A bash script that runs ``lines`` verbatim and stops at the first that fails."""
    parts = [
        "set -e -o pipefail",
        "trap 'echo \"walkthrough: $BASH_COMMAND exited $?\" >&2' ERR",
    ]
    for number, line in enumerate(lines, 1):
        parts += [
            f"echo {shlex.quote(f'--- {number}: {line}')} >&2",
            line,
            f'rc=$?; [ "$rc" -eq 0 ] || {{ echo "walkthrough: line {number} exited $rc" >&2; '
            'exit "$rc"; }',
        ]
    return "\n".join(parts) + "\n"


def test_walkthrough_lines_are_the_readme_block() -> None:
    lines = walkthrough_lines()
    # The walkthrough the issue names: a volume, a VM on it, a snapshot by name, a revert.
    assert any("vmsnap volume create" in line for line in lines)
    assert any("vmsnap snapshot list web --json" in line for line in lines)
    assert any("vmsnap snapshot revert web/before-upgrade" in line for line in lines)


# A dozen CLI processes: seconds each on a machine shared with parallel test workers.
@pytest.mark.timeout(400)
def test_readme_walkthrough_runs_verbatim_on_a_fresh_stack(sockdir: Path, tmp_path: Path) -> None:
    up = Up(sockdir, tmp_path / "up.log")
    try:
        env = {k: v for k, v in os.environ.items() if k != "VMSNAP_HOST"}
        env["VMSNAP_HOME"] = str(sockdir)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        done = subprocess.run(
            ["bash", "-c", script(walkthrough_lines())],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=360,
            check=False,
        )
        assert done.returncode == 0, f"{done.stderr}\n{done.stdout}"
        # It ran every line, and what it promised happened.
        assert done.stderr.count("--- ") == len(walkthrough_lines()), done.stderr
        assert '"name": "before-upgrade"' in done.stdout
    finally:
        up.proc.stop(timeout=30)
