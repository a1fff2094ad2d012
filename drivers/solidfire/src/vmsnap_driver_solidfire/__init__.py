"""vmsnap reference storage driver for SolidFire / Element clusters.

A VM snapshot is one Element group snapshot (crash consistent across the VM's
volumes without a freeze), tagged with the host's ids. Run it with the
``vmsnap-driver-solidfire`` console script; embed it with :class:`SolidFireDriver`.
"""

from vmsnap_driver_solidfire._array import ElementArray
from vmsnap_driver_solidfire._config import Config, ConfigError, Secret
from vmsnap_driver_solidfire._driver import DRIVER_NAME, SolidFireDriver, __version__
from vmsnap_driver_solidfire._main import main

__all__ = [
    "Config",
    "ConfigError",
    "DRIVER_NAME",
    "ElementArray",
    "Secret",
    "SolidFireDriver",
    "__version__",
    "main",
]
