"""Who may call the host's control API and what they may touch (issue 12).

- :mod:`.principal`: roles, principals and their projects;
- :mod:`.settings`: the ``[auth]`` table of the host's configuration;
- :mod:`.authenticate`: credentials (bearer token, JWT, client certificate) → principal;
- :mod:`.interceptor`: the gRPC server interceptor that authenticates every call,
  checks its role and writes the audit record;
- :mod:`.access`: the caller of the current call, project checks, audit notes.
"""
