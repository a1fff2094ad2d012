"""What every vendor driver needs around its vendor's SDK, written once.

- :mod:`.config`: settings from a flag, else the environment, else a TOML file,
  with the array's endpoint, user, password file and TLS checked at start;
- :class:`Secret` and :func:`read_secret_file`: passwords only from files, never
  printed;
- :class:`KeyLocks`: one asyncio lock per key (a snapshot id), forgotten when free;
- :class:`BlockingCalls`: blocking vendor-SDK calls in worker threads, a bounded
  number at once, ended at the caller's gRPC deadline.

Both reference drivers use it (drivers/solidfire, drivers/netapp); a new driver
starts from ``sdk/examples`` and these. docs/design.md, "Vendor toolkit".
"""

from vmsnap_sdk.toolkit.blocking import BlockingCalls, deadline_remaining
from vmsnap_sdk.toolkit.config import (
    ArrayEndpoint,
    ConfigError,
    Settings,
    add_array_arguments,
    array_endpoint,
    truthy,
)
from vmsnap_sdk.toolkit.locks import KeyLocks
from vmsnap_sdk.toolkit.secrets import MAX_SECRET_BYTES, Secret, read_secret_file

__all__ = [
    "MAX_SECRET_BYTES",
    "ArrayEndpoint",
    "BlockingCalls",
    "ConfigError",
    "KeyLocks",
    "Secret",
    "Settings",
    "add_array_arguments",
    "array_endpoint",
    "deadline_remaining",
    "read_secret_file",
    "truthy",
]
