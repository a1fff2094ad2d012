"""vmsnap reference storage driver for NetApp ONTAP.

VM disks are files in ONTAP volumes; a VM snapshot is a set of file clones,
tagged by the directory they live in. File clones of several files are not
atomic: the host freezes the VM first (hypervisor overlay) and unquiesces after.
Run it with the ``vmsnap-driver-netapp`` console script; embed it with
:class:`NetAppDriver`.
"""

from vmsnap_driver_netapp._array import OntapArray
from vmsnap_driver_netapp._config import Config, ConfigError, Secret
from vmsnap_driver_netapp._driver import DRIVER_NAME, NetAppDriver, __version__
from vmsnap_driver_netapp._main import main

__all__ = [
    "Config",
    "ConfigError",
    "DRIVER_NAME",
    "NetAppDriver",
    "OntapArray",
    "Secret",
    "__version__",
    "main",
]
