"""Debian's protoc, grpc-java and Go toolchains, and builds of the contracts with them.

Everything comes from Debian packages (.ci/apt-packages.txt): protoc and the
grpc-java plugin, grpc-java's and protobuf-java's jars in /usr/share/java, Go
with protoc-gen-go, protoc-gen-go-grpc and the Go sources of gRPC, protobuf and
genproto in /usr/share/gocode (GOPATH mode: no module download). The googleapis
protos are the pinned wheel's (scripts/proto_deps.py), compiled for Java here
like any dependency, never copied into proto/.

A missing tool skips the cross-language tests on a developer's machine, with
the apt-get line that installs it; under CI (``CI`` set) it fails them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.procs import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import proto_deps

SHARE_JAVA = Path("/usr/share/java")
GOCODE = Path("/usr/share/gocode/src")
#: Jars of grpc-java (netty transport) and protobuf-java, with what they need at run time.
JARS = (
    "grpc-api",
    "grpc-context",
    "grpc-core",
    "grpc-netty",
    "grpc-protobuf",
    "grpc-protobuf-lite",
    "grpc-stub",
    "protobuf",
    "guava",
    "perfmark-api",
    # grpc-netty's transport (Debian's netty-all.jar is an empty aggregate).
    "netty-buffer",
    "netty-codec",
    "netty-codec-http",
    "netty-codec-http2",
    "netty-codec-socks",
    "netty-common",
    "netty-handler",
    "netty-handler-proxy",
    "netty-resolver",
    "netty-transport",
    # javax.annotation.Generated, which grpc-java 1.41's generated stubs carry.
    "geronimo-annotation-1.3-spec",
)
GO_SOURCES = (
    "google.golang.org/grpc",
    "google.golang.org/protobuf",
    "google.golang.org/genproto/googleapis/rpc/status",
)
GOOGLEAPIS = tuple(proto_deps.FILES)
JAVA_PACKAGES = (
    "protobuf-compiler protobuf-compiler-grpc-java-plugin libgrpc-java libprotobuf-java "
    "libnetty-java libperfmark-java libguava-java libgeronimo-annotation-1.3-spec-java "
    "openjdk-17-jdk-headless"
)
GO_PACKAGES = (
    "protobuf-compiler golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev "
    "golang-google-genproto-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev"
)


def require(missing: list[str], packages: str) -> None:
    """Skip (a developer's machine) or fail (CI: ``CI`` set, as .ci/run does) when a
    tool is missing, as tests/support/tools.py does for single tools."""
    if not missing:
        return
    what = f"missing {', '.join(missing)}; install: apt-get install {packages}"
    if os.environ.get("CI"):
        pytest.fail(f"in CI (.ci/apt-packages.txt installs them): {what}", pytrace=False)
    pytest.skip(f"Debian toolchain not installed: {what}")


def java_missing() -> list[str]:
    tools = [t for t in ("protoc", "grpc_java_plugin", "javac", "java") if shutil.which(t) is None]
    jars = [f"{SHARE_JAVA}/{j}.jar" for j in JARS if not (SHARE_JAVA / f"{j}.jar").is_file()]
    return tools + jars


def go_missing() -> list[str]:
    tools = [
        t
        for t in ("protoc", "protoc-gen-go", "protoc-gen-go-grpc", "go")
        if shutil.which(t) is None
    ]
    sources = [f"{GOCODE}/{s}" for s in GO_SOURCES if not (GOCODE / s).is_dir()]
    return tools + sources


def classpath(*extra: Path) -> str:
    return ":".join([*(str(p) for p in extra), *(f"{SHARE_JAVA}/{j}.jar" for j in JARS)])


@dataclass
class Build:
    """What a build printed, step by step, and how long each step took."""

    output: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, step: str, cmd: list[str], **kwargs: object) -> None:
        start = time.monotonic()
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
            **kwargs,  # type: ignore[call-overload]
        )
        self.seconds[step] = round(time.monotonic() - start, 1)
        self.output[step] = (result.stdout + result.stderr).strip()
        assert result.returncode == 0, f"{step} failed:\n{self.output[step]}"


def _protoc_inputs() -> tuple[list[str], list[str]]:
    """(include flags, vmsnap files) for protoc: the contracts, the staged googleapis,
    the well-known types of the pinned grpcio-tools."""
    import grpc_tools

    googleapis = proto_deps.stage()
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(
        str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto/vmsnap").rglob("*.proto")
    )
    return [f"-I{ROOT / 'proto'}", f"-I{googleapis}", f"-I{well_known}"], files


def build_java(out: Path) -> Build:
    """Generate Java for the contracts and the googleapis protos, compile it with
    the default lint, then the example client with every lint as an error."""
    build = Build()
    includes, files = _protoc_inputs()
    generated, classes = out / "generated", out / "classes"
    generated.mkdir(parents=True)
    classes.mkdir()
    build.run(
        "protoc java",
        [
            "protoc",
            *includes,
            f"--java_out={generated}",
            f"--plugin=protoc-gen-grpc-java={shutil.which('grpc_java_plugin')}",
            f"--grpc-java_out={generated}",
            *files,
            *GOOGLEAPIS,
        ],
    )
    # C1 only and the serial collector: javac runs once, JIT warm-up would not pay.
    fast = ["-J-XX:TieredStopAtLevel=1", "-J-XX:+UseSerialGC", "-proc:none", "-encoding", "UTF-8"]
    sources = sorted(str(p) for p in generated.rglob("*.java"))
    build.run("javac generated", ["javac", *fast, "-d", str(classes), "-cp", classpath(), *sources])
    client = sorted(str(p) for p in (ROOT / "clients/java/src").rglob("*.java"))
    build.run(
        "javac client",
        [
            "javac",
            *fast,
            "-Xlint:all",
            "-Werror",
            "-d",
            str(classes),
            "-cp",
            classpath(classes),
            *client,
        ],
    )
    return build


def build_go(out: Path) -> Build:
    """Generate Go (messages and gRPC stubs) into a GOPATH and compile and vet it
    against Debian's Go sources of gRPC, protobuf and genproto."""
    build = Build()
    includes, files = _protoc_inputs()
    gopath = out / "gopath"
    (gopath / "src").mkdir(parents=True)
    build.run(
        "protoc go",
        [
            "protoc",
            *includes,
            f"--go_out={gopath / 'src'}",
            f"--go-grpc_out={gopath / 'src'}",
            *files,
        ],
    )
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}:{GOCODE.parent}",
        "GOFLAGS": "",
        "GOTOOLCHAIN": "local",
        # Go's own build cache (~/.cache/go-build): the dependencies compile once
        # per machine, not once per run.
    }
    build.run("go vet", ["go", "vet", "vmsnap.io/gen/go/..."], env=env, cwd=gopath)
    return build
