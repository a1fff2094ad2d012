"""The JSON-RPC method table of the Element emulator, and the call entry point.

Methods register with :func:`rpc`; they take the cluster state and validated
:class:`~.params.Params` and return the ``result`` object, shaped like ``solidfire.models``
(``CreateSnapshotResult`` ...). Unknown methods answer ``xUnknownAPIMethod``, as the real
API does. The methods themselves live in :mod:`.rpc_cluster`, :mod:`.rpc_volumes` and
:mod:`.rpc_snapshots` (imported by :mod:`.methods`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import ElementError
from .params import Params
from .state import ElementState

API_VERSION = "12.3"
SUPPORTED_VERSIONS = (
    "1.0 2.0 3.0 4.0 5.0 6.0 7.0 7.1 7.2 7.3 7.4 8.0 8.1 8.2 8.3 8.4 8.5 8.6 8.7 9.0 9.1 9.2 "
    "9.3 9.4 9.5 9.6 10.0 10.1 10.2 10.3 10.4 10.5 10.6 10.7 11.0 11.1 11.3 11.5 11.7 11.8 "
    "12.0 12.2 12.3"
).split()
ELEMENT_VERSION = "12.3.0.958"

Method = Callable[[ElementState, Params], dict[str, Any]]
METHODS: dict[str, Method] = {}


def rpc(name: str) -> Callable[[Method], Method]:
    def register(fn: Method) -> Method:
        METHODS[name] = fn
        return fn

    return register


def call(
    state: ElementState, method: Any, raw_params: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one method under the state lock: (result, unusedParameters)."""
    if not isinstance(method, str) or method not in METHODS:
        raise ElementError("xUnknownAPIMethod", f"Unknown method: method={method}")
    params = Params(raw_params)
    with state.lock:
        result = METHODS[method](state, params)
    return result, params.unused()
