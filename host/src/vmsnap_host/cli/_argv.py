"""Global options anywhere on the line: ``vmsnap snapshot list --host X`` is
``vmsnap --host X snapshot list``.

Click reads a group's options only before its subcommand. Rather than declare
``--host`` on every command, :func:`hoist` moves the global options it finds
after the subcommand to the front, before Click parses. It walks the command
tree as Click will, so an option's value (``--description --json``) is never
mistaken for an option, and a command that declares an option of the same
name (``--json`` on most commands) keeps it.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperOption

#: Global options that take a value (``--host X`` or ``--host=X``).
VALUE_OPTIONS = frozenset(
    {
        "--host",
        "--tls-ca",
        "--tls-cert",
        "--tls-key",
        "--tls-server-name",
        "--token-file",
        "-o",
        "--output",
    }
)
#: Global flags.
FLAG_OPTIONS = frozenset({"--json", "--no-trunc"})


def _option(command: Any, name: str) -> TyperOption | None:
    for param in command.params:
        if isinstance(param, TyperOption) and name in (*param.opts, *param.secondary_opts):
            return param
    return None


def hoist(args: list[str], root: Any) -> list[str]:
    """``args`` with the global options that follow a subcommand moved to the front.

    ``root`` is the Click command of the app (``typer.main.get_command``; Typer
    vendors Click, so it is typed loosely here).
    """
    front: list[str] = []
    rest: list[str] = []
    command = root
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            rest += args[i:]
            break
        name, eq, _ = token.partition("=")
        if name.startswith("-o") and not name.startswith("--") and len(name) > 2:
            name, eq = "-o", "="  # -owide
        declared = command is not root and _option(command, name) is not None
        if not declared and name in VALUE_OPTIONS:
            front += [token] if eq else args[i : i + 2]
            i += 1 if eq else 2
            continue
        if not declared and token in FLAG_OPTIONS:
            front.append(token)
            i += 1
            continue
        rest.append(token)
        subcommands = getattr(command, "commands", None)
        if not token.startswith("-") and isinstance(subcommands, dict):
            command = subcommands.get(token, command)
        elif token.startswith("-") and not eq:
            option = _option(command, name)
            if option is not None and not option.is_flag and not option.count:
                rest += args[i + 1 : i + 2]  # its value, whatever it looks like
                i += 1
        i += 1
    return front + rest
