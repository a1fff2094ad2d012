"""``vmsnap-driver-solidfire --listen ADDRESS --url https://MVIP --user U --password-file F``.

The SDK's ``run_driver`` adds the standard server flags (``--listen``, TLS,
logging, shutdown grace); this module adds the cluster's (see ``_config``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vmsnap_driver_solidfire._config import ConfigError, add_arguments, from_arguments
from vmsnap_driver_solidfire._driver import SolidFireDriver
from vmsnap_sdk import run_driver


def _build(args: argparse.Namespace) -> SolidFireDriver:
    try:
        return SolidFireDriver(from_arguments(args))
    except ConfigError as exc:
        sys.exit(f"vmsnap-driver-solidfire: {exc}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script."""
    run_driver(
        _build,
        description="vmsnap storage driver for SolidFire / Element clusters",
        argv=argv,
        extra_arguments=add_arguments,
    )


if __name__ == "__main__":
    main()
