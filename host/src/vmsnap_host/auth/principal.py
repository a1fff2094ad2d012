"""Roles and principals: who a caller is once authenticated."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.IntEnum):
    """Each role can do what the roles below it can."""

    VIEWER = 1  # reads its projects' VMs, snapshots and operations
    OPERATOR = 2  # also snapshots, reverts, deletes, defines and runs VMs
    ADMIN = 3  # also drivers, agents, reconciliation, findings, audit; every project

    @classmethod
    def parse(cls, value: str) -> Role:
        return cls[value.upper()]


#: The projects entry that means every project (and VMs of none).
ALL = "*"


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    projects: frozenset[str]
    #: How the call authenticated: "token", "jwt", "mtls", or "local" (auth off).
    via: str = "token"

    @property
    def all_projects(self) -> bool:
        return self.role is Role.ADMIN or ALL in self.projects

    def sees(self, project: str) -> bool:
        """Whether objects of ``project`` ("" = none) are visible to this principal."""
        return self.all_projects or (bool(project) and project in self.projects)

    def visible_projects(self) -> frozenset[str] | None:
        """The projects to filter listings by; None for all (VMs of no project too)."""
        return None if self.all_projects else self.projects


#: The caller when authentication is off (a unix socket or loopback): the local
#: operator, who may do anything, as before issue 12.
LOCAL = Principal("local", Role.ADMIN, frozenset({ALL}), via="local")
