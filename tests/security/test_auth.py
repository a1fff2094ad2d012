"""Authentication, projects, roles and the audit log, over real processes.

One host with authentication on (static tokens stored hashed, a JWT key), the
sim agent and a fake driver: no credentials → UNAUTHENTICATED; a project-A
operator cannot see, snapshot, revert or delete project B's VM (NOT_FOUND, the
same answer as for a VM that does not exist) and the audit log shows each
refusal; a viewer cannot mutate; only an admin registers drivers; the audit
log survives a restart of the host.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.security.harness import (
    PRINCIPALS,
    Caller,
    Stack,
    auth_config,
    code_and_reason,
    stack,
    vm,
    wait_op,
)
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb

NOT_FOUND = grpc.StatusCode.NOT_FOUND

#: One stack for the module: its tests run on one xdist worker, after each other.
pytestmark = pytest.mark.xdist_group("security-auth")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path_factory.mktemp("jwt") / "idp.pem"
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key, path


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, keys: tuple[ec.EllipticCurvePrivateKey, Path]
) -> Iterator[Stack]:
    sock = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
    _, pem = keys
    jwt_table = f'[auth.jwt]\nkey_file = "{pem}"\nalgorithms = ["ES256"]\naudience = "vmsnap"\n'
    try:
        for s in stack(sock, tmp_path_factory.mktemp("auth")):
            s.start_host(auth_config() + "\n" + jwt_table)
            yield s
    finally:
        shutil.rmtree(sock, ignore_errors=True)


def refused(call, request) -> tuple[grpc.StatusCode, str, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    code, reason = code_and_reason(caught.value)
    return code, reason, caught.value.details()  # type: ignore[attr-defined]


def test_no_credentials_is_unauthenticated_and_health_stays_open(secured: Stack) -> None:
    anonymous = secured.as_(None)
    for call, request in (
        (anonymous.ListVMs, pb.ListVMsRequest()),
        (anonymous.CreateVMSnapshot, pb.CreateVMSnapshotRequest()),
        (anonymous.ListDrivers, pb.ListDriversRequest()),
        # Server streams are gated like unary calls.
        (lambda r: list(anonymous.ReadSnapshotDisk(r)), pb.ReadSnapshotDiskRequest()),
        (lambda r: list(anonymous.WatchOperations(r)), pb.WatchOperationsRequest()),
    ):
        code, reason, message = refused(call, request)
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
        assert "token" in message
    bad = Caller(secured.stub(), "tok-not-a-real-one-42")
    code, _, message = refused(bad.ListVMs, pb.ListVMsRequest())
    assert code == grpc.StatusCode.UNAUTHENTICATED and "tok-not-a-real-one-42" not in message
    assert secured.channel is not None
    health = health_pb2_grpc.HealthStub(secured.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_project_sees_and_touches_only_its_own(secured: Stack) -> None:
    alice, bob, root = secured.as_("alice"), secured.as_("bob"), secured.as_("root")
    defined = alice.DefineVM(pb.DefineVMRequest(vm=vm("vm-a")))
    assert defined.project == "proj-a"
    assert bob.DefineVM(pb.DefineVMRequest(vm=vm("vm-b"))).project == "proj-b"
    bob.StartVM(pb.StartVMRequest(vm_id="vm-b"))
    b_op = wait_op(
        bob,
        bob.CreateVMSnapshot(
            pb.CreateVMSnapshotRequest(request_id="b-1", vm_id="vm-b", name="s1")
        ).operation,
    )
    assert b_op.project == "proj-b" and not b_op.HasField("error")
    b_snap = b_op.vm_snapshot_id

    # Another project's VM looks exactly like one that does not exist.
    missing = refused(alice.GetVM, pb.GetVMRequest(vm_id="no-such-vm"))
    hidden = refused(alice.GetVM, pb.GetVMRequest(vm_id="vm-b"))
    assert hidden[:2] == missing[:2] == (NOT_FOUND, "VM_NOT_FOUND")
    assert hidden[2].replace("vm-b", "X") == missing[2].replace("no-such-vm", "X")
    for call, request in (
        (alice.StartVM, pb.StartVMRequest(vm_id="vm-b")),
        (alice.StopVM, pb.StopVMRequest(vm_id="vm-b")),
        (alice.CreateVMSnapshot, pb.CreateVMSnapshotRequest(request_id="a-x", vm_id="vm-b", name="x")),
        (alice.UndefineVM, pb.UndefineVMRequest(request_id="a-u", vm_id="vm-b")),
        (alice.GetVMSnapshot, pb.GetVMSnapshotRequest(id=b_snap)),
        (alice.RevertVMSnapshot, pb.RevertVMSnapshotRequest(request_id="a-r", id=b_snap, stop_vm=True)),
        (alice.DeleteVMSnapshot, pb.DeleteVMSnapshotRequest(request_id="a-d", id=b_snap)),
        (alice.GetOperation, pb.GetOperationRequest(id=b_op.id)),
        (alice.WaitOperation, pb.WaitOperationRequest(id=b_op.id)),
        (alice.CancelOperation, pb.CancelOperationRequest(operation_id=b_op.id)),
        (
            lambda r: list(alice.WatchOperations(r)),
            pb.WatchOperationsRequest(operation_id=b_op.id),
        ),
        (lambda r: list(alice.WatchOperations(r)), pb.WatchOperationsRequest(vm_id="vm-b")),
        (
            lambda r: list(alice.GetSnapshotDiskBlocks(r)),
            pb.GetSnapshotDiskBlocksRequest(vm_snapshot_id=b_snap, disk="root"),
        ),
        (
            lambda r: list(alice.ReadSnapshotDisk(r)),
            pb.ReadSnapshotDiskRequest(vm_snapshot_id=b_snap, disk="root", length=4096),
        ),
    ):
        code, _, message = refused(call, request)
        assert code == NOT_FOUND, (request, message)
        assert "proj-b" not in message
    # bob's request_id is refused to alice without saying what it was for.
    code, reason, message = refused(
        alice.CreateVMSnapshot, pb.CreateVMSnapshotRequest(request_id="b-1", vm_id="vm-a", name="s")
    )
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert "vm-b" not in message
    # bob's id is taken, whoever asks (ALREADY_EXISTS, nothing said about bob's VM).
    code, reason, _ = refused(alice.DefineVM, pb.DefineVMRequest(vm=vm("vm-b")))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "VM_ALREADY_EXISTS")

    # Listings hold only alice's; the admin's hold both.
    assert [v.id for v in alice.ListVMs(pb.ListVMsRequest()).vms] == ["vm-a"]
    assert alice.ListVMSnapshots(pb.ListVMSnapshotsRequest()).vm_snapshots == []
    assert alice.ListVMSnapshots(pb.ListVMSnapshotsRequest(vm_id="vm-b")).vm_snapshots == []
    assert alice.ListOperations(pb.ListOperationsRequest()).operations == []
    assert {v.id for v in root.ListVMs(pb.ListVMsRequest()).vms} >= {"vm-a", "vm-b"}
    assert [s.id for s in root.ListVMSnapshots(pb.ListVMSnapshotsRequest()).vm_snapshots] == [b_snap]
    # bob's snapshot is untouched.
    assert bob.GetVMSnapshot(pb.GetVMSnapshotRequest(id=b_snap)).vm_snapshot.state == pb.VM_SNAPSHOT_STATE_READY

    # The audit log shows each refusal, with the project alice reached for.
    records = root.ListAuditRecords(pb.ListAuditRecordsRequest(principal="alice", only_refused=True)).records
    methods = {r.method for r in records}
    assert {"GetVM", "CreateVMSnapshot", "RevertVMSnapshot", "DeleteVMSnapshot", "GetVMSnapshot"} <= methods
    revert = next(r for r in records if r.method == "RevertVMSnapshot")
    assert (revert.project, revert.result, revert.request_id, revert.target) == (
        "proj-b",
        "NOT_FOUND",
        "a-r",
        b_snap,
    )
    assert "proj-b" in revert.detail and revert.authenticated_by == "token"


def test_roles(secured: Stack, tmp_path: Path) -> None:
    vera, alice, root = secured.as_("vera"), secured.as_("alice"), secured.as_("root")
    alice.DefineVM(pb.DefineVMRequest(vm=vm("vm-r")))
    assert [v.id for v in vera.ListVMs(pb.ListVMsRequest()).vms] == sorted(
        v.id for v in alice.ListVMs(pb.ListVMsRequest()).vms
    )
    for call, request in (
        (vera.CreateVMSnapshot, pb.CreateVMSnapshotRequest(request_id="v-1", vm_id="vm-r", name="x")),
        (vera.StartVM, pb.StartVMRequest(vm_id="vm-r")),
        (vera.DefineVM, pb.DefineVMRequest(vm=vm("vm-v"))),
        (alice.RegisterDriver, pb.RegisterDriverRequest(address=f"unix://{secured.sock}/a.sock")),
        (alice.RemoveDriver, pb.RemoveDriverRequest(name="io.vmsnap.test.a")),
        (alice.RegisterAgent, pb.RegisterAgentRequest(address=f"unix://{secured.sock}/agent.sock")),
        (alice.ListAuditRecords, pb.ListAuditRecordsRequest()),
        (alice.Reconcile, pb.ReconcileRequest(dry_run=True)),
    ):
        code, reason, message = refused(call, request)
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"), message
        assert "role" in message
    registered = root.RegisterDriver(pb.RegisterDriverRequest(address=f"unix://{secured.sock}/a.sock"))
    assert registered.driver.name == "io.vmsnap.test.a"
    records = root.ListAuditRecords(pb.ListAuditRecordsRequest(page_size=50)).records
    mine = [r for r in records if r.method == "RegisterDriver"]
    assert [(r.principal, r.result, r.refused) for r in mine[:2]] == [
        ("root", "OK", False),
        ("alice", "PERMISSION_DENIED", True),
    ]


def test_jwt_bearer_tokens(secured: Stack, keys: tuple[ec.EllipticCurvePrivateKey, Path]) -> None:
    key, _ = keys
    now = int(time.time())

    def token(claims: dict[str, object], signer: ec.EllipticCurvePrivateKey = key) -> Caller:
        body = {"aud": "vmsnap", "exp": now + 300, **claims}
        return Caller(secured.stub(), jwt.encode(body, signer, algorithm="ES256"))

    # bob's VM (made here when this test runs before the one that defines it).
    if "vm-b" not in {v.id for v in secured.as_("root").ListVMs(pb.ListVMsRequest()).vms}:
        secured.as_("bob").DefineVM(pb.DefineVMRequest(vm=vm("vm-b")))
    # A subject that names a principal acts as it; another takes its role from claims.
    assert [v.id for v in token({"sub": "bob"}).ListVMs(pb.ListVMsRequest()).vms] == ["vm-b"]
    viewer = token({"sub": "dash", "vmsnap_role": "viewer", "vmsnap_projects": ["proj-b"]})
    assert [v.id for v in viewer.ListVMs(pb.ListVMsRequest()).vms] == ["vm-b"]
    code, _, _ = refused(viewer.StartVM, pb.StartVMRequest(vm_id="vm-b"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    for bad, says in (
        (token({"sub": "bob", "exp": now - 600}), "expired"),
        (token({"sub": "bob", "aud": "other"}), "audience"),
        (token({"sub": "bob"}, ec.generate_private_key(ec.SECP256R1())), "not signed"),
        (token({"sub": "nobody"}), "role"),
    ):
        code, _, message = refused(bad.ListVMs, pb.ListVMsRequest())
        assert code == grpc.StatusCode.UNAUTHENTICATED and says in message.lower(), message
    unsigned = Caller(secured.stub(), jwt.encode({"sub": "root", "exp": now + 60}, None, algorithm="none"))  # type: ignore[arg-type]
    assert refused(unsigned.ListVMs, pb.ListVMsRequest())[0] == grpc.StatusCode.UNAUTHENTICATED


def test_the_audit_log_survives_a_restart_and_the_cli_reads_it(secured: Stack, tmp_path: Path) -> None:
    root = secured.as_("root")
    # A refusal of its own, so the test does not lean on the tests before it.
    refused(secured.as_(None).ListVMs, pb.ListVMsRequest())
    before = root.ListAuditRecords(pb.ListAuditRecordsRequest(page_size=1000)).records
    assert before
    secured.procs["host"].kill()  # as a crash: no clean shutdown
    secured.restart_host()
    after = root.ListAuditRecords(pb.ListAuditRecordsRequest(page_size=1000)).records
    assert [r.time.ToNanoseconds() for r in after[-len(before) :]] == [
        r.time.ToNanoseconds() for r in before
    ]

    token = tmp_path / "alice.token"
    token.write_text(PRINCIPALS["root"][0] + "\n")
    alice_token = tmp_path / "alice2.token"
    alice_token.write_text(PRINCIPALS["alice"][0])
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "200"}

    def vmsnap(*args: str, token_file: Path | None) -> subprocess.CompletedProcess[str]:
        extra = {"VMSNAP_TOKEN_FILE": str(token_file)} if token_file else {}
        return subprocess.run(
            [sys.executable, "-m", "vmsnap_host.cli", "--host", secured.address, *args],
            capture_output=True,
            text=True,
            env={**env, **extra},
            timeout=60,
            check=False,
        )

    listed = vmsnap("audit", "list", "--refused", "--json", token_file=token)
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    assert records and all(r["refused"] for r in records)
    nothing = vmsnap("vm", "list", token_file=None)
    assert nothing.returncode == 4
    assert "UNAUTHENTICATED" in nothing.stderr and "--token-file" in nothing.stderr
    denied = vmsnap("audit", "list", token_file=alice_token)
    assert denied.returncode == 4
    assert "PERMISSION_DENIED" in denied.stderr and "admin" in denied.stderr
    hidden = vmsnap("vm", "show", "vm-b", token_file=alice_token)
    assert hidden.returncode == 3 and "NOT_FOUND" in hidden.stderr


def test_a_jwks_document_and_its_key_ids(tmp_path: Path) -> None:
    """``[auth.jwt] key_file`` may be a JWKS: every key in it verifies."""
    from vmsnap_host.auth.authenticate import Authenticator
    from vmsnap_host.auth.settings import parse_auth
    from vmsnap_sdk.errors import Unauthenticated

    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(2)]
    jwks = {"keys": []}
    for i, key in enumerate(keys):
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwks["keys"].append({**jwk, "kid": f"k{i}", "alg": "ES256", "use": "sig"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    auth = Authenticator(
        parse_auth({"required": True, "jwt": {"key_file": str(path), "algorithms": ["ES256"]}})
    )
    claims = {"sub": "ci", "exp": int(time.time()) + 60, "vmsnap_role": "operator", "vmsnap_projects": ["p"]}
    for key in keys:
        principal = auth.authenticate({"authorization": "Bearer " + jwt.encode(claims, key, "ES256")}, [])
        assert (principal.name, principal.role.name, principal.projects, principal.via) == (
            "ci",
            "OPERATOR",
            frozenset({"p"}),
            "jwt",
        )
    stranger = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), "ES256")
    with pytest.raises(Unauthenticated):
        auth.authenticate({"authorization": "Bearer " + stranger}, [])
