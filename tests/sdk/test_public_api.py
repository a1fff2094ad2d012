"""The SDK's public surface: explicit, sorted, importable, free of protobuf."""

from __future__ import annotations

import inspect
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import vmsnap_sdk
from tests.support.procs import ROOT
from vmsnap_sdk import errors, limits


@pytest.mark.parametrize("module", [vmsnap_sdk, errors, limits])
def test_all_is_explicit_sorted_and_importable(module: object) -> None:
    names = list(module.__all__)  # type: ignore[attr-defined]
    assert names == sorted(names)
    for name in names:
        assert hasattr(module, name), name


def test_no_protobuf_type_in_the_vendor_facing_api() -> None:
    for name in vmsnap_sdk.__all__:
        obj = getattr(vmsnap_sdk, name)
        if inspect.isclass(obj):
            for base in inspect.getmro(obj):
                assert not base.__module__.startswith(("google.protobuf", "vmsnap_sdk._proto")), (
                    name
                )


@pytest.mark.slow
@pytest.mark.ondemand  # pip installs into a fresh venv: `make test-all`
def test_the_sdk_installs_alone_into_an_empty_venv(tmp_path: Path) -> None:
    """`pip install ./sdk` gives a working vmsnap_sdk and no host."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            str(ROOT / "constraints.txt"),
            str(ROOT / "sdk"),
        ],
        check=True,
        capture_output=True,
    )
    probe = (
        "import importlib.util, vmsnap_sdk;"
        "from vmsnap_sdk import DriverClient, StorageDriver;"
        "assert importlib.util.find_spec('vmsnap_host') is None;"
        "print(vmsnap_sdk.__version__)"
    )
    out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == vmsnap_sdk.__version__
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.lower()
    assert "vmsnap-sdk==" in listed
    assert "vmsnap-host" not in listed
    assert sys.executable != str(python)
