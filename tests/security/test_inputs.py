"""Hostile input on the host's control API, auth off (the defects issue 12 lists).

Each of these failed before issue 12: a page token past SQLite's integer range
and a TLS path over 255 bytes were INTERNAL; a registration reached any DNS
name and any network; a TLS path told whether a file exists; a request_id
reused with other arguments returned the first operation.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.security.harness import Stack, code_and_reason, stack, vm, wait_op
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb

#: One stack for the module: its tests run on one xdist worker, after each other.
pytestmark = pytest.mark.xdist_group("security-inputs")


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    sock = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
    try:
        for s in stack(sock, tmp_path_factory.mktemp("inputs")):
            s.start_host("")
            yield s
    finally:
        shutil.rmtree(sock, ignore_errors=True)


def _refused(call, request) -> tuple[grpc.StatusCode, str, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    code, reason = code_and_reason(caught.value)
    return code, reason, caught.value.details()  # type: ignore[attr-defined]


@pytest.mark.parametrize("token", ["p8000000000000000", "p" + "f" * 40, "p-1", "x1", "p"])
def test_a_page_token_past_the_integer_range_is_invalid_argument(plain: Stack, token: str) -> None:
    host = plain.as_(None)
    for call, request in (
        (host.ListVMSnapshots, pb.ListVMSnapshotsRequest(page_token=token)),
        (host.ListOperations, pb.ListOperationsRequest(page_token=token)),
        (host.ListFindings, pb.ListFindingsRequest(page_token=token)),
    ):
        code, reason, message = _refused(call, request)
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"), message
        assert "page_token" in message


def test_a_tls_path_over_255_bytes_is_invalid_argument(plain: Stack, tmp_path: Path) -> None:
    host = plain.as_(None)
    long_path = str(tmp_path / ("x" * 300))
    for field in ("ca_file", "cert_file"):
        tls = pb.TlsConfig(**{field: long_path})
        if field == "cert_file":
            tls.key_file = long_path
        code, _, message = _refused(
            host.RegisterDriver, pb.RegisterDriverRequest(address=f"unix://{tmp_path}/d.sock", tls=tls)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, message
        assert "255 bytes" in message


def test_tls_paths_are_no_existence_oracle(plain: Stack, tmp_path: Path) -> None:
    """A file that exists but is not in an allowed directory, and one that does not
    exist, get the same answer: the API does not tell which files the host has."""
    host = plain.as_(None)
    answers = set()
    for path in ("/etc/passwd", "/etc/no-such-file.pem", str(tmp_path / "host.toml")):
        request = pb.RegisterDriverRequest(
            address=f"unix://{tmp_path}/d.sock", tls=pb.TlsConfig(ca_file=path)
        )
        code, reason, message = _refused(host.RegisterDriver, request)
        answers.add((code, reason, message.replace(path, "PATH")))
    assert len(answers) == 1, answers
    code, _, message = answers.pop()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "tls_dirs" in message


@pytest.mark.parametrize(
    "address",
    [
        "example.com:443",  # a DNS name nobody configured
        "10.1.2.3:50051",  # outside the configured networks (default: loopback)
        "[2001:db8::1]:50051",
        "dns:///example.com:443",
        "ipv4:10.0.0.1:50051",
        "unix:relative.sock",  # a unix socket must be an absolute path
        "unix-abstract:vmsnap",
        "127.0.0.1:99999",
    ],
)
def test_registration_addresses_are_unix_sockets_or_configured_networks(
    plain: Stack, address: str
) -> None:
    host = plain.as_(None)
    for call, request in (
        (host.RegisterDriver, pb.RegisterDriverRequest(address=address)),
        (host.RegisterAgent, pb.RegisterAgentRequest(address=address)),
    ):
        code, reason, message = _refused(call, request)
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"), message
        assert "address" in message


def test_request_id_reused_with_other_arguments_is_already_exists(plain: Stack) -> None:
    host = plain.as_(None)
    host.DefineVM(pb.DefineVMRequest(vm=vm("vm1")))

    def create(**kw: object) -> pb.Operation:
        request = pb.CreateVMSnapshotRequest(request_id="c-1", vm_id="vm1", name="s1")
        for key, value in kw.items():
            setattr(request, key, value)
        return host.CreateVMSnapshot(request).operation

    first = wait_op(host, create())
    assert create().id == first.id  # the same request: the same operation
    for changed in ({"description": "other"}, {"quiesce": pb.QUIESCE_POLICY_OFF}):
        with pytest.raises(grpc.RpcError) as caught:
            create(**changed)
        assert code_and_reason(caught.value) == (
            grpc.StatusCode.ALREADY_EXISTS,
            "REQUEST_ID_REUSED",
        ), changed

    snap = first.vm_snapshot_id
    revert = pb.RevertVMSnapshotRequest(request_id="r-1", id=snap, stop_vm=False)
    wait_op(host, host.RevertVMSnapshot(revert).operation)
    with pytest.raises(grpc.RpcError) as caught:
        host.RevertVMSnapshot(pb.RevertVMSnapshotRequest(request_id="r-1", id=snap, stop_vm=True))
    assert code_and_reason(caught.value) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")

    # Delete's only argument is its target: another snapshot, or another type's id.
    for request_id in ("c-1", "r-1"):
        with pytest.raises(grpc.RpcError) as caught:
            host.DeleteVMSnapshot(pb.DeleteVMSnapshotRequest(request_id=request_id, id=snap))
        assert code_and_reason(caught.value) == (
            grpc.StatusCode.ALREADY_EXISTS,
            "REQUEST_ID_REUSED",
        )

    undefine = pb.UndefineVMRequest(request_id="u-1", vm_id="vm1", delete_snapshots=True)
    assert host.UndefineVM(undefine, timeout=30).undefined
    with pytest.raises(grpc.RpcError) as caught:
        host.UndefineVM(pb.UndefineVMRequest(request_id="u-1", vm_id="vm1"))
    assert code_and_reason(caught.value) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
