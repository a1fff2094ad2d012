"""Everything `make test` checks, in order, stopping at the first failure.

ruff, mypy --strict on our code (not the generated code), the proto checks
(generated code up to date, buf lint, buf breaking against the previous commit
of main), then pytest in parallel (pytest-xdist, ``-n auto``; pass ``-n 0`` to run
in one process). Extra arguments go to pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SOURCES = [
    p
    for p in (
        "sdk/src",
        "host/src",
        "agent/src",
        "emulators/src",
        "drivers/netapp/src",
        "drivers/solidfire/src",
        "sdk/examples",
        "scripts",
        "bench",
    )
    if (ROOT / p).exists()
]


def run(title: str, cmd: list[str], **kwargs: object) -> None:
    print(f"== {title}: {' '.join(cmd)}", flush=True)
    result = subprocess.run(cmd, cwd=ROOT, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        print(f"FAILED: {title} (exit {result.returncode})", flush=True)
        sys.exit(result.returncode)


def _previous_commit_has_protos() -> bool:
    probe = subprocess.run(
        ["git", "cat-file", "-e", "HEAD~1:proto/buf.yaml"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def main() -> None:
    run("ruff", [str(BIN / "ruff"), "check", *SOURCES, "tests"])
    run("mypy", [str(BIN / "mypy"), "--strict", *SOURCES])
    run("generated code", [sys.executable, "scripts/gen_protos.py", "--check"])
    buf = str(BIN / "buf")
    run("buf lint", [buf, "lint", "proto"])
    if _previous_commit_has_protos():
        run(
            "buf breaking",
            [buf, "breaking", "proto", "--against", f"{ROOT / '.git'}#ref=HEAD~1,subdir=proto"],
        )
    else:
        print("== buf breaking: skipped, the previous commit has no proto/ to compare against")
    env = dict(os.environ)
    args = sys.argv[1:]
    if not any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in args):
        # In parallel (pytest-xdist); QEMU tests share one worker (tests/conftest.py).
        args = ["-n", "auto", "--dist", "loadgroup", "--durations=15", *args]
    run("pytest", [sys.executable, "-m", "pytest", *args], env=env)


if __name__ == "__main__":
    main()
