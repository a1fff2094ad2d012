"""The stack of ``vmsnap up --hypervisor qemu``: real guests on real (emulated) arrays.

QEMU needs the disks' bytes, which the in-memory stand-in drivers do not keep,
so this stack runs the Element and ONTAP emulators (under ``$VMSNAP_HOME/arrays``,
Element volumes exported over NBD), the reference drivers on them (with their
ConformanceFixture service, which the demo uses to make disks), and
``vmsnap-agent --hypervisor qemu`` with a locator map that reaches all of them:

* ``element://vmsnap-element/<id>`` → ``nbd://127.0.0.1:<nbd port>/<id>``
* ``ontap://svm0/<volume>/<path>`` → ``$VMSNAP_HOME/arrays/ontap/export/svm0/<volume>/<path>``
* ``file:///var/lib/vmsnap/<path>`` → ``$VMSNAP_HOME/disks/<path>`` (local qcow2 disks)

The emulators listen on loopback ports picked free when the home's stack is first
built and kept (``arrays/ports.json``) while they stay free: VMs defined earlier
hold the NBD port in their disks' urls.

Kept apart from _table.py (which only adds "qemu" to HYPERVISORS and calls this),
written while the embedded stack's own switch to emulators and reference drivers
was made on another branch. Left to do: give _table.py's Element emulator
``--nbd-listen`` (pinned like its HTTPS port) and shrink this module to the agent
and its locator map, computed from the emulators' ``listen.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from vmsnap_stack._table import Component, Layout, executable

ELEMENT_CLUSTER = "vmsnap-element"
ONTAP_SVM = "svm0"
LOCAL_DISKS = "file:///var/lib/vmsnap/"


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ports(arrays: Path, names: tuple[str, ...]) -> dict[str, int]:
    """Loopback ports of this home, kept across starts in ``arrays/ports.json``.

    The agent resolves a VM's locators when the VM is defined (its NBD url holds
    the port), so the same home keeps its ports while they are free.
    """
    path = arrays / "ports.json"
    try:
        saved = {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        saved = {}
    ports = {n: saved[n] if n in saved and _bindable(saved[n]) else _free_port() for n in names}
    if ports != saved:
        path.write_text(json.dumps(ports))
    return ports


def _listening(port: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    return check


def _password_file(arrays: Path) -> Path:
    """The emulators' admin password, made once per home (the drivers read the same file)."""
    arrays.mkdir(parents=True, exist_ok=True)
    path = arrays / "password"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(18))
    return path


def _certificates(*data_dirs: Path) -> None:
    """The emulators' TLS certificates, made now: the drivers (started with the
    emulators, not after them) read them as their CA file."""
    try:
        from vmsnap_emulators.tlscert import ensure_certificate
    except ImportError as exc:
        raise ValueError(
            "--hypervisor qemu runs the array emulators and the reference drivers: install "
            "vmsnap-emulators, vmsnap-driver-solidfire and vmsnap-driver-netapp"
        ) from exc
    for data in data_dirs:
        data.mkdir(parents=True, exist_ok=True)
        ensure_certificate(data, f"vmsnap-{data.name}-emulator")


def qemu_components(layout: Layout, durable: bool = True) -> list[Component]:
    """Emulators, reference drivers and the QEMU agent (build() adds the host).

    ``durable=False`` runs the emulators without fsync (a throw-away demo home).
    """
    arrays = layout.home / "arrays"
    password = _password_file(arrays)
    ports = _ports(arrays, ("element", "nbd", "ontap"))
    el_port, nbd_port, on_port = ports["element"], ports["nbd"], ports["ontap"]
    element_data, ontap_data = arrays / "element", arrays / "ontap"
    _certificates(element_data, ontap_data)
    emulator = [sys.executable, "-m", "vmsnap_emulators"]
    common = ["--user", "admin", "--password-file", str(password)]
    if not durable:
        common.append("--no-fsync")
    components = [
        Component(
            name="array-element",
            role="array emulator",
            description=f"Element API emulator, volumes over NBD on 127.0.0.1:{nbd_port}",
            command=(
                *emulator,
                "element",
                "--listen",
                f"127.0.0.1:{el_port}",
                "--data",
                str(element_data),
                "--cluster",
                ELEMENT_CLUSTER,
                "--nbd-listen",
                f"127.0.0.1:{nbd_port}",
                *common,
            ),
            address=f"https://127.0.0.1:{el_port}",
            ready=_listening(el_port),
            stage=0,
        ),
        Component(
            name="array-ontap",
            role="array emulator",
            description=f"ONTAP REST emulator, export {ontap_data / 'export'}",
            command=(
                *emulator,
                "ontap",
                "--listen",
                f"127.0.0.1:{on_port}",
                "--data",
                str(ontap_data),
                "--svm",
                ONTAP_SVM,
                *common,
            ),
            address=f"https://127.0.0.1:{on_port}",
            ready=_listening(on_port),
            stage=0,
        ),
    ]
    drivers = (
        ("driver-element", "solidfire", el_port, element_data, ("--cluster", ELEMENT_CLUSTER)),
        ("driver-ontap", "netapp", on_port, ontap_data, ("--job-poll-interval", "0.1")),
    )
    for name, vendor, port, data, extra in drivers:
        components.append(
            Component(
                name=name,
                role="storage driver",
                description=f"reference {vendor} driver on {name.removeprefix('driver-')} emulator",
                command=(
                    sys.executable,
                    "-m",
                    f"vmsnap_driver_{vendor}",
                    "--listen",
                    layout.socket(name),
                    # A host name: the Element SDK verifies TLS for names only.
                    "--url",
                    f"https://localhost:{port}",
                    "--user",
                    "admin",
                    "--password-file",
                    str(password),
                    "--ca-file",
                    str(data / "tls-cert.pem"),
                    "--conformance-fixture",
                    *extra,
                ),
                address=layout.socket(name),
            )
        )
    maps = (
        f"element://{ELEMENT_CLUSTER}/=nbd://127.0.0.1:{nbd_port}/",
        f"ontap://{ONTAP_SVM}/={ontap_data / 'export' / ONTAP_SVM}/",
        f"{LOCAL_DISKS}={layout.home / 'disks'}/",
    )
    components.append(
        Component(
            name="agent",
            role="hypervisor agent",
            description=f"qemu hypervisor (TCG unless VMSNAP_QEMU_ACCEL=kvm), state in "
            f"{layout.agent_state}",
            command=(
                *executable("vmsnap-agent", "vmsnap_agent.cli"),
                "--hypervisor",
                "qemu",
                "--listen",
                layout.socket("agent"),
                "--state",
                str(layout.agent_state),
                "--name",
                "qemu-1",
                *(arg for m in maps for arg in ("--map", m)),
            ),
            address=layout.socket("agent"),
        )
    )
    return components
