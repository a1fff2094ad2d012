"""Fixtures for the emulator tests, reusable by the drivers' tests.

The fixtures live in the installable package (``vmsnap_emulators.pytest_fixtures``) so that
any test tree can import them the same way; see that module for the contract:

* ``element_emulator`` / ``ontap_emulator``: shared (session) emulator processes;
* ``fresh_element_emulator`` / ``fresh_ontap_emulator``: one new process per test;
* ``element_sdk``: a connected ``solidfire.Element``;
* ``ontap_connection``: a ``netapp_ontap.HostConnection``.

Each emulator fixture yields an ``EmulatorProcess`` with ``url``, ``host``, ``port``,
``user``, ``password``, ``cert``, ``data_dir`` and helpers to read/write bytes and restart.
"""

from vmsnap_emulators.pytest_fixtures import (  # noqa: F401 - imported fixtures register here
    element_emulator,
    element_sdk,
    fresh_element_emulator,
    fresh_ontap_emulator,
    ontap_connection,
    ontap_emulator,
)
