"""Snapshot policies: schedules, runs and retention (docs/design.md, "Policies").

:mod:`.model` the definitions and their rules, :mod:`.retention` which snapshots
a policy keeps, :mod:`.catalog` their rows, :mod:`.scheduler` the leader's task
that claims due runs, starts them through the manager and applies retention.
"""
