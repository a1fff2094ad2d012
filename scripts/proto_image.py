"""A buf image of the contracts as they were at a git commit.

``buf breaking`` compares the contracts with an image: the previous commit's
(scripts/check.py builds it on the fly) and the last release's, checked in under
``proto/releases/`` because a CI clone has no tags. A git input
(``.git#ref=...``) is not enough since the googleapis protos moved out of
``proto/``: they are staged from a pinned wheel (scripts/proto_deps.py), not
committed, so the image is built from an export of the commit plus the staged
dependency. Both layouts build: the old one (``proto/buf.yaml`` with a copy of
``google/rpc/status.proto`` inside ``proto/``) and the current one (the
workspace ``buf.yaml`` at the root). Only ``vmsnap/...`` files are the image's
own; what they import is in it as imports.

    python scripts/proto_image.py COMMIT OUT.binpb    # e.g. to cut a release image
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import proto_deps

ROOT = proto_deps.ROOT
BUF = Path(sys.executable).parent / "buf"


def has_protos(ref: str) -> bool:
    """Whether the commit exists here and has the contracts."""
    probe = subprocess.run(
        ["git", "cat-file", "-e", f"{ref}:proto/vmsnap"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def _export(ref: str, dest: Path) -> None:
    paths = ["proto"]
    if (
        subprocess.run(
            ["git", "cat-file", "-e", f"{ref}:buf.yaml"], cwd=ROOT, capture_output=True, check=False
        ).returncode
        == 0
    ):
        paths.append("buf.yaml")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, *paths], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")


def build(ref: str, out: Path) -> None:
    """Write the image of the contracts at ``ref`` (no source info: it is compared,
    not read) to ``out``."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        _export(ref, tree)
        proto_deps.stage(tree / ".deps" / "googleapis")
        subprocess.run(
            [
                str(BUF),
                "build",
                str(tree / "proto"),
                "--path",
                str(tree / "proto" / "vmsnap"),
                "--exclude-source-info",
                "-o",
                str(out),
            ],
            cwd=tree,
            check=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref", help="a git commit (or any git revision) that has proto/vmsnap")
    parser.add_argument("out", type=Path, help="where to write the image (.binpb)")
    args = parser.parse_args()
    if not has_protos(args.ref):
        print(f"{args.ref} is not a commit here with proto/vmsnap", file=sys.stderr)
        return 1
    build(args.ref, args.out.resolve())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
