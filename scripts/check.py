"""Everything `make test` checks, in order, stopping at the first failure.

ruff, mypy --strict on our code (not the generated code), the proto checks
(generated code up to date, buf lint, buf breaking against the previous commit,
the newest release tag vX.Y.Z when the clone has tags, and the last release's
image in proto/releases), then pytest in parallel
(pytest-xdist, one worker more than the cores; pass ``-n 0`` to run in one
process). Extra arguments go to pytest.
"""

from __future__ import annotations

import compileall
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import proto_deps
import proto_image

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
        "stack/src",
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


#: The exceptions for comparing with contracts from before the language options.
OPTIONS_EXCEPTIONS = ROOT / "proto" / "releases" / "v0.1.breaking.yaml"


def _last_release() -> tuple[str, Path, Path | None] | None:
    """The newest release image in proto/releases (name, image, its breaking config)."""
    images = sorted(
        (ROOT / "proto" / "releases").glob("v*.binpb"),
        key=lambda p: [int(n) for n in re.findall(r"\d+", p.stem)],
    )
    if not images:
        return None
    image = images[-1]
    config = image.with_name(f"{image.stem}.breaking.yaml")
    return image.stem, image, config if config.exists() else None


def _last_tag() -> str | None:
    """The newest release tag (``vX.Y.Z``) of this clone that has the contracts;
    None in a clone without tags (then the checked-in image stands for it)."""
    tags = subprocess.run(
        ["git", "tag", "--list", "v[0-9]*", "--sort=-v:refname"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return next((t for t in tags if proto_image.has_protos(t)), None)


def _predates_language_options(ref: str) -> bool:
    """Whether the contracts at ``ref`` set no language options (v0.1 and the
    commits before they were added): compared with those, the options' one-time
    addition is expected (proto/releases/v0.1.breaking.yaml)."""
    found = subprocess.run(
        ["git", "grep", "-q", "^option java_package", ref, "--", "proto/vmsnap"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    return found.returncode == 1


def _breaking(buf: str) -> None:
    release = _last_release()
    with tempfile.TemporaryDirectory() as tmp:
        # The previous commit as an image: its googleapis protos are not in git.
        if proto_image.has_protos("HEAD~1"):
            previous = Path(tmp) / "previous.binpb"
            proto_image.build("HEAD~1", previous)
            cmd = [buf, "breaking", "proto", "--against", str(previous)]
            if _predates_language_options("HEAD~1"):
                cmd += ["--config", str(OPTIONS_EXCEPTIONS.relative_to(ROOT))]
            run("buf breaking (previous commit)", cmd)
        else:
            print("== buf breaking: skipped, the previous commit has no proto/ to compare against")
        tag = _last_tag()
        if tag is not None:
            # A release is tagged vX.Y.Z and its image checked in as proto/releases/
            # vX.Y.binpb (docs/versioning.md); the tag is the truth when the clone has it.
            tagged = Path(tmp) / "tag.binpb"
            proto_image.build(tag, tagged)
            cmd = [buf, "breaking", "proto", "--against", str(tagged)]
            if _predates_language_options(tag):
                cmd += ["--config", str(OPTIONS_EXCEPTIONS.relative_to(ROOT))]
            run(f"buf breaking (release tag {tag})", cmd)
    if release is None:
        print("== buf breaking: no release image in proto/releases")
        return
    name, image, config = release
    cmd = [buf, "breaking", "proto", "--against", str(image.relative_to(ROOT))]
    if config is not None:
        cmd += ["--config", str(config.relative_to(ROOT))]
    run(f"buf breaking (release {name})", cmd)


def compile_bytecode() -> None:
    """Write the .pyc of the venv's packages and of ours before the tests run.

    The suite starts Python processes (hosts, drivers, agents, ``vmsnap``) hundreds
    of times; each one compiles from source every module it imports when there is
    no .pyc, about half of a host's start-up CPU. uv installs without .pyc, and
    where PYTHONDONTWRITEBYTECODE is set (this machine's image sets it) no
    process ever writes one. Reading a .pyc is not affected by that variable; a
    stale one is recompiled in memory (its source's mtime is checked). Once
    written this pass is a fraction of a second.
    """
    print("== bytecode: compileall (the venv's packages, ours, tests)", flush=True)
    # quiet=2: a third-party file that does not compile (a py2 example) is neither
    # ours to fix nor a reason to stop; its import would fail anyway. One process:
    # ~20 s in a fresh venv (on every core it was no faster on two busy ones,
    # and took 4 s instead of 1 once everything is compiled).
    venv = Path(sysconfig.get_paths()["purelib"])
    for folder in [venv, *(ROOT / p for p in SOURCES), ROOT / "tests"]:
        compileall.compile_dir(folder, quiet=2)


def main() -> None:
    run("ruff", [str(BIN / "ruff"), "check", *SOURCES, "tests"])
    run("mypy", [str(BIN / "mypy"), "--strict", *SOURCES])
    run("generated code", [sys.executable, "scripts/gen_protos.py", "--check"])
    buf = str(BIN / "buf")
    proto_deps.stage()
    run("buf lint", [buf, "lint", "proto"])
    _breaking(buf)
    compile_bytecode()
    env = dict(os.environ)
    # pytest keeps its rewritten test modules as .pyc too, unless this is set: each
    # worker then rewrote every test module again (collection 11 s of CPU, not 5).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    args = sys.argv[1:]
    if os.environ.get("VMSNAP_ALL_TESTS") != "1" and not any(a == "-m" for a in args):
        # Long acceptance runs (marker "ondemand") stay out of CI's 15 minutes;
        # `make test-all` (VMSNAP_ALL_TESTS=1) runs them too.
        args = ["-m", "not ondemand", *args]
    if not any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in args):
        # In parallel (pytest-xdist); QEMU tests share one worker (tests/conftest.py).
        # One worker more than the cores: many tests wait on processes, sockets,
        # leases and guests; with one worker per core the two cores were 80 %
        # busy and pytest took 740 s, with three 94 % and 653 s (docs/design.md,
        # CI time).
        workers = len(os.sched_getaffinity(0)) + 1
        args = ["-n", str(workers), "--dist", "loadgroup", "--durations=15", *args]
    run("pytest", [sys.executable, "-m", "pytest", *args], env=env)


if __name__ == "__main__":
    main()
