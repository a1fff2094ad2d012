"""SolidFire Element JSON-RPC emulator (``POST /json-rpc/<version>``).

Modules: :mod:`.errors` (Element error names), :mod:`.params` (parameter validation),
:mod:`.model` (records and their wire shape), :mod:`.state` (persistent cluster state over the
copy-on-write block store), :mod:`.methods` (the RPC methods), :mod:`.app` (HTTP routes,
including the emulator-only data endpoints).
"""
