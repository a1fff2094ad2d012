"""The proto checks of `make test` catch what they are meant to catch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.procs import ROOT

BUF = str(Path(sys.executable).parent / "buf")
GENERATED = ROOT / "sdk/src/vmsnap_sdk/_proto"


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
    before, after = tmp_path / "before", tmp_path / "after"
    shutil.copytree(ROOT / "proto", before)
    shutil.copytree(ROOT / "proto", after)
    driver = after / "vmsnap/driver/v1/driver.proto"
    text = driver.read_text()
    assert "  bool needs_unquiesce = 5;\n" in text
    driver.write_text(text.replace("  bool needs_unquiesce = 5;\n", ""))
    same = subprocess.run([BUF, "breaking", str(before), "--against", str(before)], check=False)
    assert same.returncode == 0
    broken = subprocess.run(
        [BUF, "breaking", str(after), "--against", str(before)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert broken.returncode != 0
    assert "needs_unquiesce" in broken.stdout + broken.stderr


def test_buf_lint_is_clean() -> None:
    assert subprocess.run([BUF, "lint", str(ROOT / "proto")], check=False).returncode == 0
