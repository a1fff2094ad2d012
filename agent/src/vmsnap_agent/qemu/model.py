"""Data types of the QEMU backend.

They mirror the HypervisorAgent domain types of the SDK by name so the mapping
is field by field. All are plain dataclasses that round-trip through JSON
(``to_json`` / ``from_json``) because the agent persists them in its state dir.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

from .errors import InvalidSpec


class VmState(enum.StrEnum):
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"


class BootMode(enum.StrEnum):
    # The vmsnap test guest (kernel + initramfs from guest_image), for tests and demos.
    TEST_GUEST = "test-guest"
    # A real VM: firmware boots the first disk.
    DISK = "disk"


class DiskFormat(enum.StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


class QuiesceMethod(enum.StrEnum):
    # External qcow2 overlays over every disk, atomically: bases become stable.
    OVERLAY = "overlay"
    # fsfreeze through qemu-ga; the disks stay as they are but nothing writes.
    GUEST = "guest"
    # freeze → overlay → thaw: file-system-consistent stable bases, short freeze.
    OVERLAY_GUEST = "overlay+guest"
    # Pause the VM and save its device + RAM state to a file (memory.py); local qcow2
    # disks are cut at the same instant; the VM stays paused until unquiesce.
    PAUSE_MEMORY = "pause+memory"
    # freeze → cut the local qcow2 disks (internal snapshots) → thaw: no overlays,
    # for a native snapshot alone (it adopts the cut); nothing to commit after.
    GUEST_CUT = "guest+cut"


class Consistency(enum.StrEnum):
    CRASH = "crash"
    FILESYSTEM = "filesystem"
    APPLICATION = "application"


@dataclass(frozen=True)
class NbdSource:
    """Where an NBD export lives: a TCP server or a unix socket."""

    export: str
    host: str | None = None
    port: int = 10809
    socket: str | None = None

    def url(self) -> str:
        if self.socket:
            return f"nbd+unix:///{self.export}?socket={self.socket}"
        return f"nbd://{self.host}:{self.port}/{self.export}"


def parse_nbd_url(url: str) -> NbdSource:
    """Parse ``nbd://host[:port]/export`` or ``nbd+unix:///export?socket=/path``."""
    u = urlparse(url)
    export = u.path.lstrip("/")
    if u.scheme == "nbd":
        if not u.hostname:
            raise InvalidSpec(f"NBD url without host: {url}")
        return NbdSource(export=export, host=u.hostname, port=u.port or 10809)
    if u.scheme == "nbd+unix":
        sock = parse_qs(u.query).get("socket", [""])[0]
        if not sock:
            raise InvalidSpec(f"nbd+unix url without socket=: {url}")
        return NbdSource(export=export, socket=sock)
    raise InvalidSpec(f"not an NBD url: {url}")


@dataclass(frozen=True)
class DiskSpec:
    """One virtio-blk disk.

    ``path`` is a local file (raw or qcow2), or an NBD url (``nbd://host:port/export``,
    ``nbd+unix:///export?socket=/path``) whose format layer is ``format``.
    ``locator`` is the storage-side identity (``ontap://svm/vol/path``,
    ``element://cluster/42``) handed back by describe_vm for the drivers' CanHandle.
    """

    name: str
    path: str
    format: DiskFormat = DiskFormat.RAW
    locator: str = ""
    read_only: bool = False
    # Size the storage side declared (informational; the image file is the truth).
    size_bytes: int = 0

    @property
    def is_nbd(self) -> bool:
        return self.path.startswith(("nbd://", "nbd+unix://"))

    def validate(self) -> None:
        # It becomes part of QEMU ids (process.node_key shortens long ones).
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", self.name):
            raise InvalidSpec(f"disk name must be [A-Za-z0-9][A-Za-z0-9_-]{{0,62}}: {self.name!r}")
        if self.is_nbd:
            parse_nbd_url(self.path)
        elif not self.path.startswith("/"):
            raise InvalidSpec(f"disk path must be absolute or an NBD url: {self.path!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "format": str(self.format),
            "locator": self.locator,
            "read_only": self.read_only,
            "size_bytes": self.size_bytes,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DiskSpec:
        return cls(
            name=d["name"],
            path=d["path"],
            format=DiskFormat(d["format"]),
            locator=d.get("locator", ""),
            read_only=d.get("read_only", False),
            size_bytes=d.get("size_bytes", 0),
        )


@dataclass(frozen=True)
class VmSpec:
    vm_id: str
    memory_mib: int
    disks: tuple[DiskSpec, ...]
    vcpus: int = 1
    # Appended to the guest kernel command line (e.g. "vmsnap.writer=/dev/vda").
    kernel_args: str = ""
    # Wire a virtio-serial port for qemu-ga (the guest may still not run it).
    guest_agent: bool = True
    # Free text for people (the control plane's VM name).
    name: str = ""
    boot: BootMode = BootMode.TEST_GUEST

    def to_json(self) -> dict[str, Any]:
        return {
            "vm_id": self.vm_id,
            "name": self.name,
            "boot": str(self.boot),
            "memory_mib": self.memory_mib,
            "vcpus": self.vcpus,
            "kernel_args": self.kernel_args,
            "guest_agent": self.guest_agent,
            "disks": [d.to_json() for d in self.disks],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VmSpec:
        return cls(
            vm_id=d["vm_id"],
            name=d.get("name", ""),
            boot=BootMode(d.get("boot", BootMode.TEST_GUEST)),
            memory_mib=d["memory_mib"],
            vcpus=d.get("vcpus", 1),
            kernel_args=d.get("kernel_args", ""),
            guest_agent=d.get("guest_agent", True),
            disks=tuple(DiskSpec.from_json(x) for x in d["disks"]),
        )


@dataclass(frozen=True)
class DiskInfo:
    name: str
    locator: str
    base_path: str
    # The image the guest writes to now: the base, or an overlay while quiesced.
    active_path: str
    format: DiskFormat
    size_bytes: int = 0
    # Whether a native snapshot of the VM keeps this disk's bytes (``native.holds_bytes``).
    native_snapshot: bool = False


@dataclass(frozen=True)
class VmInfo:
    vm_id: str
    name: str
    state: VmState
    memory_mib: int
    disks: tuple[DiskInfo, ...]
    pid: int | None = None
    # Token of the active quiesce, if any.
    quiesce_token: str | None = None


@dataclass(frozen=True)
class QuiesceResult:
    token: str
    method: QuiesceMethod
    consistency: Consistency
    expires_at: float
    # Files (or NBD urls) that do not change until unquiesce: what arrays snapshot.
    stable_paths: tuple[str, ...]
    # Wall-clock window during which the guest file systems were frozen, if at all.
    frozen_at: float | None = None
    thawed_at: float | None = None
    # When the quiesce began (the bases are stable from here to unquiesce).
    started_at: float = 0.0
    # The caller's operation id: a retried quiesce with it gets this same result.
    operation_id: str = ""
    vm_id: str = ""
    # pause+memory: the saved state file and its size (adopted by a native snapshot).
    memory_path: str = ""
    memory_bytes: int = 0
    paused_at: float | None = None
    memory_save_s: float = 0.0
    # The native snapshot asked for with the quiesce, taken inside its freeze (the
    # cut adopted), and whether the quiesce then ended at once (nothing else held).
    native: NativeSnapshot | None = None
    released: bool = False


@dataclass(frozen=True)
class NativeSnapshot:
    snapshot_id: str
    disks: tuple[str, ...]
    include_memory: bool
    created_at: float
    vm_state_size: int = 0
    # A memory snapshot whose state is a file beside the disks (memory.py): its path,
    # and the pause and whole save it took.
    memory_path: str = ""
    memory_paused_s: float = 0.0
    memory_save_s: float = 0.0


@dataclass
class OverlayRecord:
    disk: str
    base_node: str
    overlay_node: str
    overlay_path: str


@dataclass
class QuiesceRecord:
    """Persisted state of one active quiesce: enough to undo it after a restart."""

    token: str
    vm_id: str
    method: QuiesceMethod
    consistency: Consistency
    expires_at: float
    stable_paths: list[str]
    guest_frozen: bool = False
    overlays: list[OverlayRecord] = field(default_factory=list)
    frozen_at: float | None = None
    thawed_at: float | None = None
    # The guest's frozen window as the host sees it: freeze answered → thaw sent.
    freeze_answered_at: float | None = None
    thaw_sent_at: float | None = None
    started_at: float = 0.0
    operation_id: str = ""
    # Local qcow2 disks also get an internal snapshot in the overlay transaction (the
    # "cut", same instant as the overlays): a disk-only native snapshot asked for during
    # the quiesce adopts it (a base under an overlay cannot be snapshotted any more).
    cut_tag: str = ""
    cut_disks: list[str] = field(default_factory=list)
    adopted_by: str = ""
    # pause+memory: the VM paused by this quiesce (resumed by unquiesce), the state
    # file (recorded before the save begins, so that a restarted agent deletes a
    # half-written one), its size, when the pause began and how long the save took.
    vm_paused: bool = False
    memory_path: str = ""
    memory_bytes: int = 0
    paused_at: float | None = None
    memory_save_s: float = 0.0

    def result(self) -> QuiesceResult:
        return QuiesceResult(
            token=self.token,
            method=self.method,
            consistency=self.consistency,
            expires_at=self.expires_at,
            stable_paths=tuple(self.stable_paths),
            frozen_at=self.frozen_at,
            thawed_at=self.thawed_at,
            started_at=self.started_at,
            operation_id=self.operation_id,
            vm_id=self.vm_id,
            memory_path=self.memory_path,
            memory_bytes=self.memory_bytes,
            paused_at=self.paused_at,
            memory_save_s=self.memory_save_s,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "vm_id": self.vm_id,
            "method": str(self.method),
            "consistency": str(self.consistency),
            "expires_at": self.expires_at,
            "stable_paths": self.stable_paths,
            "guest_frozen": self.guest_frozen,
            "frozen_at": self.frozen_at,
            "thawed_at": self.thawed_at,
            "freeze_answered_at": self.freeze_answered_at,
            "thaw_sent_at": self.thaw_sent_at,
            "started_at": self.started_at,
            "operation_id": self.operation_id,
            "overlays": [vars(o) for o in self.overlays],
            "cut_tag": self.cut_tag,
            "cut_disks": self.cut_disks,
            "adopted_by": self.adopted_by,
            "vm_paused": self.vm_paused,
            "memory_path": self.memory_path,
            "memory_bytes": self.memory_bytes,
            "paused_at": self.paused_at,
            "memory_save_s": self.memory_save_s,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> QuiesceRecord:
        return cls(
            token=d["token"],
            vm_id=d["vm_id"],
            method=QuiesceMethod(d["method"]),
            consistency=Consistency(d["consistency"]),
            expires_at=d["expires_at"],
            stable_paths=list(d["stable_paths"]),
            guest_frozen=d["guest_frozen"],
            frozen_at=d.get("frozen_at"),
            thawed_at=d.get("thawed_at"),
            freeze_answered_at=d.get("freeze_answered_at"),
            thaw_sent_at=d.get("thaw_sent_at"),
            started_at=d.get("started_at", 0.0),
            operation_id=d.get("operation_id", ""),
            overlays=[OverlayRecord(**o) for o in d["overlays"]],
            cut_tag=d.get("cut_tag", ""),
            cut_disks=list(d.get("cut_disks", [])),
            adopted_by=d.get("adopted_by", ""),
            vm_paused=d.get("vm_paused", False),
            memory_path=d.get("memory_path", ""),
            memory_bytes=d.get("memory_bytes", 0),
            paused_at=d.get("paused_at"),
            memory_save_s=d.get("memory_save_s", 0.0),
        )
