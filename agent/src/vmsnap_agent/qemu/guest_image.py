"""Build the vmsnap test guest: a Debian cloud kernel plus a busybox initramfs.

The guest is built from Debian packages only, so that CI can rebuild it:

* ``linux-image-cloud-amd64`` (downloaded with ``apt-get download``, not installed:
  the host's own kernel is irrelevant) gives the kernel and the virtio modules;
* ``busybox-static`` gives the userland;
* ``qemu-guest-agent`` gives ``qemu-ga`` (copied with the shared libraries ``ldd``
  lists);
* ``cpio`` packs the initramfs.

The result lands in a cache directory keyed by the package versions and by the
content of the guest scripts, so a second build is a lookup. Nothing here is ever
committed.

Run ``python -m vmsnap_agent.qemu`` to build it and print the paths.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX = "/bin/busybox"
QEMU_GA = "/usr/sbin/qemu-ga"
# Order matters: busybox insmod does not resolve dependencies (see guest/init).
GUEST_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
)
# Bump when the layout of the image changes in a way the key cannot see.
_BUILDER_VERSION = "1"


class GuestImageError(RuntimeError):
    """The guest cannot be built on this machine (a package or tool is missing)."""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    # Always on the kernel command line: the serial console for the boot log.
    base_cmdline: str = "console=ttyS0 panic=-1 quiet"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("VMSNAP_GUEST_CACHE", str(Path(base) / "vmsnap" / "guest")))


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise GuestImageError(f"{argv[0]} not found: {exc}") from exc
    if proc.returncode != 0:
        raise GuestImageError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _installed_version(package: str) -> str:
    try:
        return _run(["dpkg-query", "-W", "-f=${Version}", package]).strip()
    except GuestImageError as exc:
        raise GuestImageError(f"Debian package {package} is not installed") from exc


def _kernel_package() -> tuple[str, str]:
    """(versioned kernel package, version) behind the cloud meta package."""
    out = _run(["apt-cache", "show", "--no-all-versions", KERNEL_META_PACKAGE])
    version = re.search(r"^Version: (\S+)", out, re.M)
    depends = re.search(r"^Depends: .*?(linux-image-[0-9][^\s,(]*)", out, re.M)
    if not version or not depends:
        raise GuestImageError(f"cannot read {KERNEL_META_PACKAGE} from apt-cache (apt-get update?)")
    return depends.group(1), version.group(1)


def _guest_files() -> dict[str, bytes]:
    pkg = resources.files("vmsnap_agent.qemu") / "guest"
    return {name: (pkg / name).read_bytes() for name in ("init", "fsfreeze-hook", "shutdown")}


def _cache_key(kernel_pkg: str, kernel_version: str, files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for part in (
        _BUILDER_VERSION,
        kernel_pkg,
        kernel_version,
        _installed_version("busybox-static"),
        _installed_version("qemu-guest-agent"),
    ):
        h.update(part.encode() + b"\0")
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name] + b"\0")
    return h.hexdigest()[:16]


def _fetch_kernel(kernel_pkg: str, workdir: Path) -> Path:
    """Download and unpack the kernel package; returns the unpacked root."""
    deb = os.environ.get("VMSNAP_GUEST_KERNEL_DEB")
    if not deb:
        _run(["apt-get", "download", kernel_pkg], cwd=workdir)
        debs = sorted(workdir.glob(f"{kernel_pkg}_*.deb"))
        if not debs:
            raise GuestImageError(f"apt-get download {kernel_pkg} produced no .deb")
        deb = str(debs[0])
    root = workdir / "kernel"
    _run(["dpkg-deb", "-x", deb, str(root)])
    return root


def _copy_with_libs(binary: str, root: Path) -> None:
    """Copy a dynamically linked binary and every library ldd resolves for it."""
    paths = [binary]
    for line in _run(["ldd", binary]).splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            paths.append(m.group(1))
    for p in paths:
        dest = root / p.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(p), dest)


def _populate(root: Path, kernel_root: Path, files: dict[str, bytes]) -> None:
    for d in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "run",
        "mnt",
        "tmp",
        "etc/qemu",
        "lib/modules",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    _copy_with_libs(QEMU_GA, root)
    for name, dest in (
        ("init", "init"),
        ("fsfreeze-hook", "etc/qemu/fsfreeze-hook"),
        ("shutdown", "sbin/shutdown"),
    ):
        (root / dest).write_bytes(files[name])
        (root / dest).chmod(0o755)
    found = {p.stem: p for p in kernel_root.glob("lib/modules/*/kernel/**/*.ko")}
    for mod in GUEST_MODULES:
        if mod not in found:
            raise GuestImageError(f"kernel module {mod}.ko not in the kernel package")
        shutil.copy2(found[mod], root / "lib" / "modules" / f"{mod}.ko")


def _pack_cpio(root: Path, out: Path) -> None:
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    listing = ("\n".join([".", *names]) + "\n").encode()
    proc = subprocess.run(
        ["cpio", "--quiet", "-o", "-H", "newc"],
        cwd=root,
        input=listing,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise GuestImageError(f"cpio failed: {proc.stderr.decode(errors='replace')}")
    with gzip.open(out, "wb", compresslevel=6) as f:
        f.write(proc.stdout)


def build_guest_image(cache_dir: Path | None = None) -> GuestImage:
    """Return the cached guest for the installed package versions, building it if needed."""
    for tool in (BUSYBOX, QEMU_GA):
        if not os.path.exists(tool):
            raise GuestImageError(
                f"{tool} missing: apt-get install busybox-static qemu-guest-agent"
            )
    cache = cache_dir or default_cache_dir()
    files = _guest_files()
    kernel_pkg, kernel_version = _kernel_package()
    target = cache / _cache_key(kernel_pkg, kernel_version, files)
    image = GuestImage(kernel=target / "vmlinuz", initrd=target / "initrd.gz")
    if image.kernel.exists() and image.initrd.exists():
        _prune(cache, keep=target)
        return image

    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        work = Path(tmp)
        kernel_root = _fetch_kernel(kernel_pkg, work)
        vmlinuz = sorted(kernel_root.glob("boot/vmlinuz-*"))
        if not vmlinuz:
            raise GuestImageError("no vmlinuz in the kernel package")
        staging = work / "out"
        staging.mkdir()
        shutil.copy2(vmlinuz[0], staging / "vmlinuz")
        root = work / "root"
        _populate(root, kernel_root, files)
        _pack_cpio(root, staging / "initrd.gz")
        # Rename last: a concurrent or interrupted build never leaves a half image
        # under the key.
        try:
            staging.rename(target)
        except OSError:
            if not (image.kernel.exists() and image.initrd.exists()):
                raise
    _prune(cache, keep=target)
    return image


def _prune(cache: Path, keep: Path) -> None:
    """Drop guests of older package versions (about 18 MB each); builds in progress stay."""
    for old in cache.iterdir():
        if old != keep and old.is_dir() and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
