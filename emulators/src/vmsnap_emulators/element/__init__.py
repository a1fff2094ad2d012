"""SolidFire Element JSON-RPC emulator (``POST /json-rpc/<version>``).

Modules: :mod:`.errors` (Element error names), :mod:`.params` (parameter validation),
:mod:`.model` (records and their wire shape), :mod:`.state` (persistent cluster state over the
copy-on-write block store), :mod:`.rpc` (method table and dispatch) with the methods in
:mod:`.rpc_cluster`, :mod:`.rpc_volumes` and :mod:`.rpc_snapshots` (all registered by
importing :mod:`.methods`), :mod:`.app` (HTTP routes, including the emulator-only data
endpoints), :mod:`.offline` (in-process access to a stopped emulator's data).
"""
