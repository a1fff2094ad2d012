"""``vmsnap up --auth --tls``: the embedded stack on mutual TLS with authentication.

Tokens for admin, demo-a and demo-b are written 0600; every process serves
mutual TLS with a certificate of the development CA; the host pins each driver
and the agent by name and fingerprint; the CLI given VMSNAP_HOME uses the
admin token and the stack's certificates, and the demo passes.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.stack_support import read_stack
from tests.support.procs import Proc

#: One stack for the module: its tests run on one xdist worker, after each other.
pytestmark = pytest.mark.xdist_group("security-up")


@pytest.fixture(scope="module")
def secure_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
    log = tmp_path_factory.mktemp("secure-up") / "up.log"
    proc = Proc(
        [sys.executable, "-m", "vmsnap_host.cli", "up", "--home", str(home), "--auth", "--tls"],
        log,
        env={"COLUMNS": "200"},
    )
    try:
        deadline = time.monotonic() + 120
        while read_stack(home, timeout=120).get("pid") != proc.pid or "logs in " not in proc.output():
            assert time.monotonic() < deadline and proc.popen.poll() is None, proc.output()
            time.sleep(0.1)
        yield home
    finally:
        proc.stop(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


def vmsnap(home: Path, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMSNAP_")}
    env.update(VMSNAP_HOME=str(home), COLUMNS="200")
    if token:
        env["VMSNAP_TOKEN_FILE"] = str(home / "secrets" / f"token-{token}")
    return subprocess.run(
        [sys.executable, "-m", "vmsnap_host.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_secrets_and_certificates_are_private(secure_up: Path) -> None:
    for name in ("admin", "demo-a", "demo-b"):
        path = secure_up / "secrets" / f"token-{name}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = list((secure_up / "certs").glob("*.key"))
    assert {k.stem for k in keys} >= {"ca", "host", "agent", "admin", "driver-element"}
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    config = (secure_up / "host.toml").read_text()
    assert "pin_sha256" in config and 'required = true' in config
    for name in ("admin", "demo-a", "demo-b"):
        assert (secure_up / "secrets" / f"token-{name}").read_text().strip() not in config
    assert read_stack(secure_up)["tls"] is True


def test_projects_over_the_cli(secure_up: Path) -> None:
    define = vmsnap(
        secure_up, "vm", "define", "vm-demo-a", "--disk", "vda=file:///tmp/a.img", "--json", token="demo-a"
    )
    assert define.returncode == 0, define.stderr
    mine = vmsnap(secure_up, "vm", "list", "--json", token="demo-a")
    assert [v["id"] for v in json.loads(mine.stdout)] == ["vm-demo-a"]
    theirs = vmsnap(secure_up, "vm", "show", "vm-demo-a", token="demo-b")
    assert theirs.returncode == 3 and "NOT_FOUND" in theirs.stderr
    denied = vmsnap(secure_up, "drivers", "list", token="demo-b")
    assert denied.returncode == 4 and "PERMISSION_DENIED" in denied.stderr
    admin = vmsnap(secure_up, "audit", "list", "--refused", "--json")  # the admin token by default
    assert admin.returncode == 0, admin.stderr
    refusals = json.loads(admin.stdout)
    assert {(r["principal"], r["method"]) for r in refusals} >= {
        ("demo-b", "GetVM"),
        ("demo-b", "ListDrivers"),
    }
    drivers = vmsnap(secure_up, "drivers", "list", "--json")
    assert drivers.returncode == 0, drivers.stderr
    assert {d["health"] for d in json.loads(drivers.stdout)} == {"SERVING"}


def test_a_plaintext_client_is_refused(secure_up: Path) -> None:
    plain = vmsnap(secure_up, "--host", f"unix://{secure_up}/run/host.sock", "vm", "list")
    assert plain.returncode == 5 and "UNAVAILABLE" in plain.stderr


def test_the_demo_passes_on_mutual_tls_with_authentication(secure_up: Path) -> None:
    demo = vmsnap(secure_up, "demo")
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr
    assert "demo passed" in demo.stdout


def test_certs_init_and_hash_token(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = vmsnap(home, "certs", "init", "--home", str(home))
    assert first.returncode == 0, first.stderr
    made = {p.stem for p in (home / "certs").glob("*.crt")}
    assert made == {"ca", "host", "agent", "driver-element", "driver-ontap", "admin"}
    again = vmsnap(home, "certs", "init", "--home", str(home))
    assert "all there already" in again.stdout
    assert {p.stem for p in (home / "certs").glob("*.crt")} == made

    token = tmp_path / "t"
    token.write_text("s3cret-token\n")
    hashed = vmsnap(home, "auth", "hash-token", str(token))
    import hashlib

    assert hashed.stdout.strip() == hashlib.sha256(b"s3cret-token").hexdigest()
