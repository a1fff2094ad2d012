"""``vmsnap-driver-netapp --listen ADDRESS --url https://CLUSTER --user U --password-file F``.

The SDK's ``run_driver`` adds the standard server flags (``--listen``, TLS,
logging, shutdown grace); this module adds the cluster's (see ``_config``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vmsnap_driver_netapp._config import ConfigError, add_arguments, from_arguments
from vmsnap_driver_netapp._driver import NetAppDriver
from vmsnap_sdk import run_driver


def _build(args: argparse.Namespace) -> NetAppDriver:
    try:
        return NetAppDriver(from_arguments(args))
    except ConfigError as exc:
        sys.exit(f"vmsnap-driver-netapp: {exc}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script."""
    run_driver(
        _build,
        description="vmsnap storage driver for NetApp ONTAP (file clones)",
        argv=argv,
        extra_arguments=add_arguments,
    )


if __name__ == "__main__":
    main()
