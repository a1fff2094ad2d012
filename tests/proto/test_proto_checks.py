"""The proto checks of `make test` catch what they are meant to catch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import ROOT

BUF = str(Path(sys.executable).parent / "buf")
GENERATED = ROOT / "sdk/src/vmsnap_sdk/_proto"
sys.path.insert(0, str(ROOT / "scripts"))
import proto_deps  # noqa: E402 - scripts/ is not a package
import proto_image  # noqa: E402

RELEASES = ROOT / "proto/releases"


def _workspace(dest: Path) -> Path:
    """A copy of the buf workspace (buf.yaml, proto/, the staged googleapis protos)."""
    dest.mkdir(parents=True)
    shutil.copy(ROOT / "buf.yaml", dest / "buf.yaml")
    shutil.copytree(ROOT / "proto", dest / "proto", ignore=shutil.ignore_patterns("releases"))
    proto_deps.stage(dest / ".deps/googleapis")
    return dest


def _buf(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BUF, *args], cwd=cwd, capture_output=True, text=True, check=False)


def test_stale_generated_code_fails_the_check(tmp_path: Path) -> None:
    copy = tmp_path / "_proto"
    shutil.copytree(GENERATED, copy, ignore=shutil.ignore_patterns("__pycache__"))
    check = [sys.executable, str(ROOT / "scripts/gen_protos.py"), "--check", "--out", str(copy)]
    assert subprocess.run(check, capture_output=True, check=False).returncode == 0
    stub = copy / "driver/v1/driver_pb2.pyi"
    stub.write_text(stub.read_text() + "\n# edited by hand\n")
    result = subprocess.run(check, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "driver_pb2.pyi" in result.stderr


def test_buf_breaking_rejects_a_removed_field(tmp_path: Path) -> None:
    work = _workspace(tmp_path / "ws")
    before = tmp_path / "before.binpb"
    assert _buf(work, "build", "proto", "-o", str(before)).returncode == 0
    assert _buf(work, "breaking", "proto", "--against", str(before)).returncode == 0
    driver = work / "proto/vmsnap/driver/v1/driver.proto"
    text = driver.read_text()
    assert "  bool needs_unquiesce = 5;\n" in text
    driver.write_text(text.replace("  bool needs_unquiesce = 5;\n", ""))
    broken = _buf(work, "breaking", "proto", "--against", str(before))
    assert broken.returncode != 0
    assert "needs_unquiesce" in broken.stdout + broken.stderr


def test_buf_lint_is_clean(tmp_path: Path) -> None:
    lint = _buf(_workspace(tmp_path / "ws"), "lint", "proto")
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_the_contracts_do_not_carry_a_copy_of_googleapis(tmp_path: Path) -> None:
    """google/rpc comes from the pinned wheel, staged outside proto/: a Java or Go
    build of proto/ compiles only vmsnap's files."""
    roots = {p.relative_to(ROOT / "proto").parts[0] for p in (ROOT / "proto").rglob("*.proto")}
    assert roots == {"vmsnap"}
    staged = proto_deps.stage(tmp_path / "googleapis")
    assert (staged / "google/rpc/error_details.proto").is_file()
    pin = f"googleapis-common-protos=={proto_deps.pinned_version()}"
    assert (staged / "VERSION").read_text().strip() == pin


def test_release_image_check_allows_only_the_language_options(tmp_path: Path) -> None:
    """Against v0.1 the one-time addition of the language options is the only
    exception (v0.1.breaking.yaml); a real break still fails with that config."""
    work = _workspace(tmp_path / "ws")
    image, config = RELEASES / "v0.1.binpb", RELEASES / "v0.1.breaking.yaml"
    shutil.copy(config, work / "exceptions.yaml")
    bare = _buf(work, "breaking", "proto", "--against", str(image), "--error-format=json")
    assert bare.returncode != 0
    rules = {line.split('"type":"')[1].split('"')[0] for line in bare.stdout.splitlines()}
    assert rules and all(r.startswith("FILE_SAME_") for r in rules), rules
    allowed = ["breaking", "proto", "--against", str(image), "--config", "exceptions.yaml"]
    assert _buf(work, *allowed).returncode == 0
    common = work / "proto/vmsnap/common/v1/common.proto"
    common.write_text(common.read_text().replace("  string locator = 2;", "  bytes locator = 2;"))
    broken = _buf(work, *allowed)
    assert broken.returncode != 0
    assert "locator" in broken.stdout


def test_a_changed_language_option_fails_against_a_commit_that_has_them(tmp_path: Path) -> None:
    work = _workspace(tmp_path / "ws")
    before = tmp_path / "before.binpb"
    assert _buf(work, "build", "proto", "-o", str(before)).returncode == 0
    host = work / "proto/vmsnap/host/v1/host.proto"
    host.write_text(host.read_text().replace('"io.vmsnap.host.v1"', '"io.vmsnap.hostapi.v1"'))
    broken = _buf(work, "breaking", "proto", "--against", str(before))
    assert broken.returncode != 0
    assert "java_package" in broken.stdout


def test_release_image_is_rebuilt_byte_for_byte_from_its_commit(tmp_path: Path) -> None:
    commit = "875fcfa0cf1550cb76715230663dcfe1aacbee36"
    if not proto_image.has_protos(commit):
        pytest.skip(f"this clone does not have v0.1's commit {commit[:7]} (shallow)")
    out = tmp_path / "v0.1.binpb"
    proto_image.build(commit, out)
    assert out.read_bytes() == (RELEASES / "v0.1.binpb").read_bytes()
