"""The host's hints in the CLI's words.

The host's messages serve every client, so a hint there names the RPC or the
request field (``stop it first (StopVM) or pass stop_vm=true``). A person at
the command line needs the command and the flag instead; :func:`cli_words`
rewrites the hints the host gives before the CLI prints a message. Only hint
positions are rewritten (``(StopVM)``, ``with ListOperations``, ``field=value``):
a message that reports what a driver's call did (``ListVMSnapshots on driver
X failed``) keeps the call's name. ``tests/cli/test_cli_words.py`` checks that
every hint in the host's sources has a rewrite.
"""

from __future__ import annotations

import re

#: RPCs a hint may name, and the command that does the same.
COMMANDS = {
    "StopVM": "vmsnap vm stop",
    "StartVM": "vmsnap vm start",
    "ListVMs": "vmsnap vm list",
    "DefineVM": "vmsnap vm define",
    "UndefineVM": "vmsnap vm undefine",
    "CreateVMSnapshot": "vmsnap snapshot create",
    "ListVMSnapshots": "vmsnap snapshot list",
    "GetVMSnapshot": "vmsnap snapshot show",
    "RevertVMSnapshot": "vmsnap snapshot revert",
    "DeleteVMSnapshot": "vmsnap snapshot delete",
    "ListOperations": "vmsnap operations list",
    "GetOperation": "vmsnap operations show",
    "WaitOperation": "vmsnap operations show",
    "RegisterDriver": "vmsnap drivers register",
    "ListDrivers": "vmsnap drivers list",
    "RemoveDriver": "vmsnap drivers remove",
    "RegisterAgent": "vmsnap agents register",
    "ListAgents": "vmsnap agents list",
    "RemoveAgent": "vmsnap agents remove",
    "Reconcile": "vmsnap reconcile",
    "ListFindings": "vmsnap findings list",
    "CancelOperation": "vmsnap operations cancel",
    "WatchOperations": "vmsnap events --follow",
    "FreezeVM": "vmsnap vm freeze",
    "RenewFreeze": "vmsnap vm freeze",
    "ThawVM": "vmsnap vm freeze",
    "DiscoverSnapshots": "vmsnap snapshot discover",
    "AdoptSnapshot": "vmsnap snapshot adopt",
    "CreateVMFromSnapshot": "vmsnap vm clone",
    "CreatePolicy": "vmsnap policy create",
    "ListPolicies": "vmsnap policy list",
    "GetPolicy": "vmsnap policy show",
    "SetVMLabels": "vmsnap vm label",
    "ListAuditRecords": "vmsnap audit list",
}

#: Request fields a hint may name (as ``field=value`` or ``field (--flag)``), and the flag.
FLAGS = {
    "stop_vm=true": "--stop-vm",
    "include_memory=false": "without --memory",
    "include_memory=true": "--memory",
    "delete_snapshots=true": "--delete-snapshots",
    "delete_snapshots (--delete-snapshots)": "--delete-snapshots",
    "show_removed=true": "--all",
}

_RPC = "|".join(sorted(COMMANDS, key=len, reverse=True))
#: An RPC in a hint: "(StopVM)", "(RegisterAgent or …", "with ListOperations".
_HINT = re.compile(rf"(?<=\()({_RPC})(?=[) ])|(?<=with )({_RPC})\b")
_FIELD = re.compile("|".join(re.escape(f) for f in sorted(FLAGS, key=len, reverse=True)))


def cli_words(message: str) -> str:
    """``message`` with its RPC and field hints in command and flag form."""
    message = _FIELD.sub(lambda m: FLAGS[m.group(0)], message)
    return _HINT.sub(lambda m: f"`{COMMANDS[m.group(1) or m.group(2)]}`", message)
