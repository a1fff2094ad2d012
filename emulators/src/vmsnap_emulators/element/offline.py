"""Open an Element emulator's data directory in-process, while no emulator runs on it.

For tools and tests that want the volumes' bytes without a server::

    with open_element_data(data_dir) as state:
        dev = state.device(volume_id)       # a blockstore.VolumeDevice
        dev.write(0, b"...")
        print(dev.read(0, 512))

It takes the data directory's lock, so it fails (:class:`~..datadir.DataDirBusyError`) while an
emulator process serves that directory: then use the HTTP side endpoints instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..datadir import lock_data_dir
from .state import ElementState


@contextmanager
def open_element_data(data_dir: Path, *, cluster: str = "vmsnap-element") -> Iterator[ElementState]:
    lock = lock_data_dir(data_dir)
    try:
        state = ElementState(data_dir / "element", cluster_name=cluster)
        with state.lock:
            yield state
            state.commit()
    finally:
        lock.close()
