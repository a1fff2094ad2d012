"""Pytest fixtures that run the emulators as real subprocesses.

Import them into a ``conftest.py`` (``from vmsnap_emulators.pytest_fixtures import *``):

* ``element_emulator`` / ``ontap_emulator`` (session scope): one shared process each, run
  with ``--no-fsync`` for speed. Tests must create their own objects and not assume an
  empty array.
* ``fresh_element_emulator`` / ``fresh_ontap_emulator`` (function scope): a new process on an
  empty data dir, fully durable, for tests that restart, crash or count.
* ``element_sdk`` (function scope): a ``solidfire.Element`` connected to ``element_emulator``.
* ``ontap_connection`` (function scope): a ``netapp_ontap.HostConnection`` to
  ``ontap_emulator`` (``verify=False``, short job polling interval), also set as the SDK's
  global ``netapp_ontap.config.CONNECTION`` while the test runs.

Each emulator fixture yields a :class:`~vmsnap_emulators.testing.EmulatorProcess`: ``url``,
``host``, ``port``, ``user``, ``password``, ``cert``, ``data_dir``, ``info`` plus helpers
(``read_volume``/``write_volume``/``read_snapshot``, ``export_dir``, ``emulator_info``,
``restart``, ``kill``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest

from .testing import EmulatorProcess, start_emulator

__all__ = [
    "element_emulator",
    "element_sdk",
    "fresh_element_emulator",
    "fresh_ontap_emulator",
    "ontap_connection",
    "ontap_emulator",
]


@pytest.fixture(scope="session")
def element_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    data = tmp_path_factory.mktemp("element") / "data"
    with start_emulator("element", data, durable=False) as emu:
        yield emu


@pytest.fixture
def fresh_element_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with start_emulator("element", tmp_path_factory.mktemp("element") / "data") as emu:
        yield emu


@pytest.fixture(scope="session")
def ontap_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    data = tmp_path_factory.mktemp("ontap") / "data"
    with start_emulator("ontap", data, durable=False) as emu:
        yield emu


@pytest.fixture
def fresh_ontap_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with start_emulator("ontap", tmp_path_factory.mktemp("ontap") / "data") as emu:
        yield emu


def element_client(emu: EmulatorProcess) -> Any:
    """A ``solidfire.Element`` for ``emu`` (API 12.3, TLS not verified)."""
    from solidfire.factory import ElementFactory

    return ElementFactory.create(
        emu.host,
        emu.user,
        emu.password,
        version="12.3",
        verify_ssl=False,
        port=emu.port,
        print_ascii_art=False,
    )


def ontap_client(emu: EmulatorProcess) -> Any:
    """A ``netapp_ontap.HostConnection`` for ``emu`` (TLS not verified, fast polling)."""
    from netapp_ontap.host_connection import HostConnection

    return HostConnection(
        emu.host,
        username=emu.user,
        password=emu.password,
        verify=False,
        port=emu.port,
        # Typed int, but only ever passed to time.sleep(): a short float keeps tests fast.
        poll_interval=cast(int, 0.05),
        poll_timeout=30,
    )


@pytest.fixture
def element_sdk(element_emulator: EmulatorProcess) -> Any:
    return element_client(element_emulator)


@pytest.fixture
def ontap_connection(ontap_emulator: EmulatorProcess) -> Iterator[Any]:
    """Also installed as ``netapp_ontap.config.CONNECTION`` for the test's duration."""
    from netapp_ontap import config

    conn = ontap_client(ontap_emulator)
    previous = config.CONNECTION
    config.CONNECTION = conn
    try:
        yield conn
    finally:
        config.CONNECTION = previous
