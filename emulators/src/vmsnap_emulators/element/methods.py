"""All Element JSON-RPC methods the emulator implements, registered in :mod:`.rpc`.

Importing this module registers them; :func:`call` runs one.
"""

from __future__ import annotations

from . import rpc_cluster, rpc_snapshots, rpc_volumes
from .rpc import API_VERSION, METHODS, SUPPORTED_VERSIONS, call

__all__ = ["API_VERSION", "METHODS", "SUPPORTED_VERSIONS", "call"]

# Referenced so that linters see why these modules are imported: they register methods.
_REGISTERED = (rpc_cluster, rpc_snapshots, rpc_volumes)
