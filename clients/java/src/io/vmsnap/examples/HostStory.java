package io.vmsnap.examples;

import com.google.protobuf.Any;
import com.google.protobuf.Duration;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.ErrorInfo;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import io.vmsnap.common.v1.ErrorReason;
import io.vmsnap.common.v1.VM;
import io.vmsnap.common.v1.VMState;
import io.vmsnap.common.v1.Volume;
import io.vmsnap.driver.v1.Capability;
import io.vmsnap.host.v1.CreateVMSnapshotRequest;
import io.vmsnap.host.v1.DefineVMRequest;
import io.vmsnap.host.v1.DeleteVMSnapshotRequest;
import io.vmsnap.host.v1.Driver;
import io.vmsnap.host.v1.GetVMSnapshotRequest;
import io.vmsnap.host.v1.ListDriversRequest;
import io.vmsnap.host.v1.Operation;
import io.vmsnap.host.v1.RevertVMSnapshotRequest;
import io.vmsnap.host.v1.UndefineVMRequest;
import io.vmsnap.host.v1.VMSnapshot;
import io.vmsnap.host.v1.VMSnapshotServiceGrpc;
import io.vmsnap.host.v1.VMSnapshotServiceGrpc.VMSnapshotServiceBlockingStub;
import io.vmsnap.host.v1.VMSnapshotState;
import io.vmsnap.host.v1.WaitOperationRequest;
import java.util.concurrent.TimeUnit;

/**
 * The control plane's story against a vmsnap host, from code generated from
 * proto/ alone (grpc-java): define a VM, snapshot it with a retried request_id,
 * revert, delete, decode one error (google.rpc.Status details to ErrorInfo to
 * the contract's ErrorReason), and undefine the VM.
 *
 * <p>Usage: {@code java io.vmsnap.examples.HostStory HOST:PORT VM_ID DISK_LOCATOR}.
 * Prints one line per step and "STORY OK" at the end; exits 1 naming the step
 * that went wrong.
 */
public final class HostStory {
  /** How long WaitOperation may wait; the call's deadline is longer, as the contract says. */
  private static final long WAIT_SECONDS = 20;

  private HostStory() {}

  public static void main(String[] args) throws InterruptedException {
    if (args.length != 3) {
      System.err.println("usage: HostStory HOST:PORT VM_ID DISK_LOCATOR");
      System.exit(2);
    }
    ManagedChannel channel = ManagedChannelBuilder.forTarget(args[0]).usePlaintext().build();
    try {
      story(VMSnapshotServiceGrpc.newBlockingStub(channel), args[1], args[2]);
      System.out.println("STORY OK");
    } catch (StoryFailed | StatusRuntimeException e) {
      System.err.println("STORY FAILED: " + e.getMessage());
      System.exit(1);
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  private static void story(VMSnapshotServiceBlockingStub host, String vmId, String locator) {
    VM vm =
        VM.newBuilder()
            .setId(vmId)
            .setName("a VM of the Java client")
            .setMemoryMib(64)
            .addVolumes(Volume.newBuilder().setDisk("vda").setLocator(locator))
            .build();
    VM defined = call(host).defineVM(DefineVMRequest.newBuilder().setVm(vm).build()).getVm();
    check(defined.getState() == VMState.VM_STATE_STOPPED, "a defined VM is STOPPED");
    System.out.println("defined " + defined.getId());

    // Capabilities are the driver contract's enum value names.
    for (Driver driver : call(host).listDrivers(ListDriversRequest.getDefaultInstance()).getDriversList()) {
      for (String name : driver.getCapabilitiesList()) {
        Capability capability = Capability.valueOf(name);
        System.out.println("driver " + driver.getName() + " offers " + capability);
      }
    }

    // A snapshot, and its retry with the same request_id: one operation, one take.
    CreateVMSnapshotRequest create =
        CreateVMSnapshotRequest.newBuilder()
            .setRequestId("java-" + vmId + "-create")
            .setVmId(vmId)
            .setName("before-upgrade")
            .build();
    Operation started = call(host).createVMSnapshot(create).getOperation();
    Operation retried = call(host).createVMSnapshot(create).getOperation();
    check(started.getId().equals(retried.getId()), "a retried request_id returns the same operation");
    Operation created = waitDone(host, started.getId());
    VMSnapshot snapshot = created.getVmSnapshot();
    check(snapshot.getState() == VMSnapshotState.VM_SNAPSHOT_STATE_READY, "the snapshot is READY");
    System.out.println("snapshot " + snapshot.getId() + " READY, taken once for a retried request");

    Operation reverted =
        waitDone(
            host,
            call(host)
                .revertVMSnapshot(
                    RevertVMSnapshotRequest.newBuilder()
                        .setRequestId("java-" + vmId + "-revert")
                        .setId(snapshot.getId())
                        .build())
                .getOperation()
                .getId());
    check(reverted.getVmSnapshot().getCurrent(), "the reverted-to snapshot is current");
    System.out.println("reverted to " + snapshot.getId());

    waitDone(
        host,
        call(host)
            .deleteVMSnapshot(
                DeleteVMSnapshotRequest.newBuilder()
                    .setRequestId("java-" + vmId + "-delete")
                    .setId(snapshot.getId())
                    .build())
            .getOperation()
            .getId());
    VMSnapshot gone =
        call(host).getVMSnapshot(GetVMSnapshotRequest.newBuilder().setId(snapshot.getId()).build()).getVmSnapshot();
    check(gone.getState() == VMSnapshotState.VM_SNAPSHOT_STATE_REMOVED, "the snapshot is REMOVED");
    System.out.println("deleted " + snapshot.getId());

    // One decoded error: the status code, and the contract's reason from its details.
    try {
      call(host).getVMSnapshot(GetVMSnapshotRequest.newBuilder().setId("no-such-snapshot").build());
      throw new StoryFailed("GetVMSnapshot of an unknown id succeeded");
    } catch (StatusRuntimeException e) {
      ErrorInfo info = errorInfo(e);
      ErrorReason reason = ErrorReason.valueOf(info.getReason());
      check(e.getStatus().getCode() == Status.Code.NOT_FOUND, "NOT_FOUND");
      check("vmsnap.io".equals(info.getDomain()), "ErrorInfo.domain is vmsnap.io");
      check(reason == ErrorReason.SNAPSHOT_NOT_FOUND, "the reason is SNAPSHOT_NOT_FOUND");
      System.out.println("decoded error " + e.getStatus().getCode() + " " + reason + " (" + info.getDomain() + ")");
    }

    boolean undefined =
        call(host)
            .undefineVM(
                UndefineVMRequest.newBuilder()
                    .setRequestId("java-" + vmId + "-undefine")
                    .setVmId(vmId)
                    .build())
            .getUndefined();
    check(undefined, "the VM is undefined");
    System.out.println("undefined " + vmId);
  }

  /** Every call with a deadline: a client that waits forever hangs with its host. */
  private static VMSnapshotServiceBlockingStub call(VMSnapshotServiceBlockingStub host) {
    return host.withDeadlineAfter(10, TimeUnit.SECONDS);
  }

  /** WaitOperation until done; each call's deadline is longer than its timeout. */
  private static Operation waitDone(VMSnapshotServiceBlockingStub host, String id) {
    for (int i = 0; i < 6; i++) {
      Operation op =
          host.withDeadlineAfter(WAIT_SECONDS + 5, TimeUnit.SECONDS)
              .waitOperation(
                  WaitOperationRequest.newBuilder()
                      .setId(id)
                      .setTimeout(Duration.newBuilder().setSeconds(WAIT_SECONDS))
                      .build())
              .getOperation();
      if (op.getDone()) {
        if (op.hasError()) {
          throw new StoryFailed("operation " + id + " failed: " + op.getError().getMessage());
        }
        return op;
      }
    }
    throw new StoryFailed("operation " + id + " is not done after " + 6 * WAIT_SECONDS + " s");
  }

  /** The ErrorInfo among the google.rpc.Status details of a failed call. */
  private static ErrorInfo errorInfo(StatusRuntimeException e) {
    com.google.rpc.Status status = StatusProto.fromThrowable(e);
    check(status != null, "the error carries google.rpc.Status details");
    for (Any detail : status.getDetailsList()) {
      if (detail.is(ErrorInfo.class)) {
        try {
          return detail.unpack(ErrorInfo.class);
        } catch (InvalidProtocolBufferException bad) {
          throw new StoryFailed("ErrorInfo does not decode: " + bad.getMessage());
        }
      }
    }
    throw new StoryFailed("no ErrorInfo in the error's details");
  }

  private static void check(boolean condition, String what) {
    if (!condition) {
      throw new StoryFailed("expected: " + what);
    }
  }

  /** A step of the story did not do what the contract says. */
  private static final class StoryFailed extends RuntimeException {
    private static final long serialVersionUID = 1L;

    StoryFailed(String message) {
      super(message);
    }
  }
}
