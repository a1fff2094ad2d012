"""The contracts' one proto dependency: the official googleapis ``google/rpc`` protos.

``host.proto`` imports ``google/rpc/status.proto``; clients decode
``google.rpc.ErrorInfo``, ``BadRequest`` and ``RetryInfo`` from
``google/rpc/error_details.proto``. Neither lives in ``proto/``: a Java or Go
build of ``proto/`` would otherwise compile its own copy of classes that
grpc-java and genproto already ship. The files come from the
googleapis-common-protos wheel, which ships them beside its Python modules and
is pinned in ``constraints.txt`` (the buf registry is not reachable from CI,
PyPI is). ``stage()`` copies them into ``.deps/googleapis`` (git-ignored), the
second module of the buf workspace (``buf.yaml``) and the extra include path of
``scripts/gen_protos.py`` and of the cross-language check.

    python scripts/proto_deps.py        # stage; prints the directory
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIST = "googleapis-common-protos"
STAGED = ROOT / ".deps" / "googleapis"
#: The google/rpc files the contracts and their clients use (status.proto imports
#: google/protobuf/any.proto, a well-known type every protoc and buf has).
FILES = ("google/rpc/status.proto", "google/rpc/error_details.proto", "google/rpc/code.proto")


class DependencyError(RuntimeError):
    """The pinned googleapis protos are not installed as pinned."""


def pinned_version() -> str:
    """The version constraints.txt pins (the generated code is made with it)."""
    text = (ROOT / "constraints.txt").read_text()
    match = re.search(rf"^{re.escape(DIST)}==(\S+)$", text, re.MULTILINE)
    if match is None:
        raise DependencyError(f"constraints.txt does not pin {DIST}")
    return match.group(1)


def source() -> Path:
    """The directory holding the installed wheel's ``google/...`` protos.

    Refuses another version than the pin: a different status.proto would change
    what the contracts compile against, silently.
    """
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        raise DependencyError(f"{DIST} is not installed; run: make venv") from None
    want = pinned_version()
    if dist.version != want:
        raise DependencyError(
            f"{DIST} {dist.version} is installed, constraints.txt pins {want}; run: make venv"
        )
    root = Path(str(dist.locate_file("")))
    missing = [f for f in FILES if not (root / f).is_file()]
    if missing:
        raise DependencyError(f"{DIST} {dist.version} ships no {', '.join(missing)}")
    return root


def _up_to_date(src: Path, dest: Path, version: str) -> bool:
    try:
        if (dest / "VERSION").read_text() != version:
            return False
        return all((dest / n).read_bytes() == (src / n).read_bytes() for n in FILES)
    except OSError:
        return False


def stage(dest: Path = STAGED) -> Path:
    """Copy the pinned files into ``dest`` (replacing what was there); return it.

    Staged files already up to date are left alone, so that concurrent runs
    (tests under xdist, a build beside a check) never see the directory half made.
    """
    src = source()
    version = f"{DIST}=={pinned_version()}\n"
    if _up_to_date(src, dest, version):
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    for name in FILES:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, target)
    (dest / "VERSION").write_text(version)
    return dest


def main() -> int:
    print(stage())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
