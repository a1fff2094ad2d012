"""The contracts from another language: Java and Go, with Debian's toolchains.

- Java: proto/ and the googleapis protos compiled with protoc and the grpc-java
  plugin, with no warning; every message and enum a top-level class (no nested
  outer classes); the example client (clients/java) runs the control plane's
  story against a real host, sim agent and fake driver started here: define,
  snapshot with a retried request_id, revert, delete, one decoded error,
  undefine.
- Go: messages and gRPC stubs compiled and vetted with no warning (a name
  clash would not compile).

Skipped with the apt-get line when a tool is missing on a developer's machine;
failed instead under CI (CI set, as .ci/run does), where .ci/apt-packages.txt
installs them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contracts import toolchain
from tests.support.procs import Proc, wait_serving
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk._proto.host.v1 import host_pb2
from vmsnap_sdk._proto.hypervisor.v1 import hypervisor_pb2

CONFIG = """
[host]
call_timeout_seconds = 10
health_interval_seconds = 0.5

[[drivers]]
address = "unix://{sock}/a.sock"

[[agents]]
address = "unix://{sock}/agent.sock"
"""


class Stack:
    """The sim agent, fake driver ``a`` and a host that also listens on loopback TCP
    (grpc-java reaches unix sockets only through netty's native epoll)."""

    def __init__(self, sock: Path, work: Path) -> None:
        self.sock, self.work = sock, work
        config = work / "host.toml"
        config.write_text(CONFIG.format(sock=sock))
        python = sys.executable
        self.procs = {
            "agent": Proc(
                [
                    python,
                    "-m",
                    "vmsnap_agent.cli",
                    "--hypervisor",
                    "sim",
                    "--state",
                    str(work / "agent"),
                    "--listen",
                    f"unix://{sock}/agent.sock",
                ],
                work / "agent.log",
            ),
            "a": Proc(
                [
                    python,
                    "-m",
                    "tests.fakes.driver",
                    "--name",
                    "io.vmsnap.test.a",
                    "--scheme",
                    "a",
                    "--state",
                    str(work / "a.json"),
                    "--listen",
                    f"unix://{sock}/a.sock",
                ],
                work / "a.log",
            ),
        }

    def start_host(self) -> str:
        """Start the host once its peers serve; return its TCP address."""
        for name in ("agent", "a"):
            wait_serving(f"unix://{self.sock}/{name}.sock")
        self.procs["host"] = host = Proc(
            [
                sys.executable,
                "-m",
                "vmsnap_host",
                "--db",
                str(self.work / "host.db"),
                "--config",
                str(self.work / "host.toml"),
                "--instance-id",
                "java-test",
                "--listen",
                f"unix://{self.sock}/host.sock",
                "--listen",
                "127.0.0.1:0",
            ],
            self.work / "host.log",
        )
        wait_serving(f"unix://{self.sock}/host.sock")
        deadline = time.monotonic() + 10
        while True:
            for line in host.output().splitlines():
                if line.startswith('{"serving"'):
                    addresses: list[str] = json.loads(line)["serving"]
                    return next(a for a in addresses if not a.startswith("unix:"))
            assert time.monotonic() < deadline, host.output()
            time.sleep(0.05)

    def close(self) -> None:
        for proc in self.procs.values():
            proc.stop(5)


@pytest.fixture
def stack(sockdir: Path, tmp_path: Path) -> Iterator[Stack]:
    toolchain.require(toolchain.java_missing(), toolchain.JAVA_PACKAGES)
    s = Stack(sockdir, tmp_path)
    try:
        yield s
    finally:
        s.close()


def _top_level_classes() -> dict[str, list[str]]:
    """Java package → the classes each message and enum must be (java_multiple_files)."""
    out: dict[str, list[str]] = {}
    for module in (common_pb2, driver_pb2, hypervisor_pb2, host_pb2):
        file = module.DESCRIPTOR
        package = file.GetOptions().java_package
        out[package] = sorted({*file.message_types_by_name, *file.enum_types_by_name})
    return out


def test_java_client_runs_the_story_against_a_real_stack(stack: Stack, tmp_path: Path) -> None:
    # The stack's processes start while javac runs.
    build = toolchain.build_java(tmp_path / "java")
    assert build.output["protoc java"] == "", build.output["protoc java"]
    assert "warning" not in build.output["javac generated"].lower(), build.output
    assert build.output["javac client"] == "", build.output["javac client"]

    classes = tmp_path / "java/classes"
    for package, names in _top_level_classes().items():
        folder = classes / package.replace(".", "/")
        missing = [n for n in names if not (folder / f"{n}.class").is_file()]
        assert not missing, (package, missing)
        nested = sorted(p.name for p in folder.glob("*Proto$*.class"))
        assert not nested, f"classes nested in an outer class: {nested}"

    address = stack.start_host()
    run = subprocess.run(
        [
            "java",
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-cp",
            toolchain.classpath(classes),
            "io.vmsnap.examples.HostStory",
            address,
            "java-vm",
            "a://pool/java-1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    story = run.stdout + run.stderr
    assert run.returncode == 0, f"{story}\nhost log:\n{stack.procs['host'].output()[-3000:]}"
    for line in (
        "defined java-vm",
        "driver io.vmsnap.test.a offers CAPABILITY_REVERT",
        "READY, taken once for a retried request",
        "reverted to",
        "deleted",
        "decoded error NOT_FOUND SNAPSHOT_NOT_FOUND (vmsnap.io)",
        "undefined java-vm",
        "STORY OK",
    ):
        assert line in story, story
    takes = [c for c in json.loads((tmp_path / "a.json").read_text())["calls"] if c[0] == "take"]
    assert len(takes) == 1, takes  # the retried request_id took nothing again
    print(f"java build seconds: {build.seconds}")


def test_go_code_compiles_and_vets_without_warnings(tmp_path: Path) -> None:
    toolchain.require(toolchain.go_missing(), toolchain.GO_PACKAGES)
    build = toolchain.build_go(tmp_path / "go")
    assert build.output == {"protoc go": "", "go vet": ""}, build.output
    generated = sorted(p.name for p in (tmp_path / "go/gopath/src").rglob("*.go"))
    assert generated == sorted(
        f"{name}{suffix}"
        for name in ("common", "driver", "hypervisor", "host")
        for suffix in (".pb.go", "_grpc.pb.go")
        if not (name == "common" and suffix == "_grpc.pb.go")
    )
    print(f"go build seconds: {build.seconds}")
