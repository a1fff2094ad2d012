"""A private PostgreSQL cluster from the distribution's binaries, for trying and testing.

``vmsnap up --db postgres`` and the test suite need a PostgreSQL server without
installing a system service: :class:`PgCluster` runs ``initdb`` and ``pg_ctl``
from Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``) in
a directory of its own. The server listens on a unix socket in that directory
only (no TCP port: nothing to collide between parallel runs, nothing reachable
from outside), trusts local connections, and is stopped with ``pg_ctl stop``.

``initdb`` refuses to run as root; as root the cluster's programs run as the
``postgres`` user (made by the package) through ``runuser``, with the cluster's
directory given to that user (its parent directories must let that user
through: /tmp does, /root does not).
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: The PostgreSQL versions vmsnap is tested with (Debian 12 ships 15).
MIN_VERSION = 13


class PgClusterError(RuntimeError):
    """The cluster could not be made or started; the message says what to install or fix."""


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<N>/bin`` with initdb and pg_ctl, or one on PATH."""
    root = Path("/usr/lib/postgresql")
    candidates = []
    if root.is_dir():
        for child in root.iterdir():
            if child.name.isdigit() and (child / "bin" / "initdb").exists():
                candidates.append((int(child.name), child / "bin"))
    if candidates:
        return max(candidates)[1]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PgCluster:
    """One cluster in ``directory`` (data in ``data/``, socket and log beside it)."""

    directory: Path
    user: str = "vmsnap"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        return self.directory

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"

    def url(self, database: str = "vmsnap") -> str:
        """The SQLAlchemy URL of a database of this cluster (psycopg 3, unix socket)."""
        return f"postgresql+psycopg://{self.user}@/{database}?host={self.socket_dir}"

    def _runas(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise PgClusterError(
                "initdb refuses to run as root and there is no 'postgres' user: install "
                "Debian's postgresql package (apt-get install postgresql) or run as another user"
            ) from None
        return ["runuser", "-u", "postgres", "--"]

    def _run(self, bindir: Path, *args: str, timeout: float = 120.0) -> None:
        cmd = [*self._runas(), str(bindir / args[0]), *args[1:]]
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            raise PgClusterError(f"{args[0]} failed (exit {result.returncode}): {' | '.join(detail)}")

    @staticmethod
    def _bindir() -> Path:
        bindir = find_bindir()
        if bindir is None:
            raise PgClusterError(
                "PostgreSQL's server programs (initdb, pg_ctl) are not installed: "
                "apt-get install postgresql"
            )
        return bindir

    def init(self, *, fast: bool = False) -> None:
        """Make the cluster unless it exists (``fast``: skip initdb's fsync)."""
        bindir = self._bindir()
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._runas():
            # The server runs as postgres: it owns its directory, and must reach it.
            shutil.chown(self.directory, "postgres", "postgres")
            for parent in self.directory.resolve().parents:
                if not parent.stat().st_mode & 0o001:
                    raise PgClusterError(
                        f"the postgres user cannot reach {self.directory}: {parent} is "
                        "closed to other users; use a directory under /tmp or /srv (or run "
                        "as another user than root)"
                    )
        if not (self.data / "PG_VERSION").exists():
            self._run(
                bindir, "initdb", "-D", str(self.data), "-U", self.user, "-A", "trust",
                "-E", "UTF8", "--no-instructions", *(["--no-sync"] if fast else []),
            )

    def server_options(self, *, fast: bool = False) -> list[str]:
        """The server's settings: a unix socket in the cluster's directory, no TCP."""
        options = [
            "-c", "listen_addresses=",
            "-c", f"unix_socket_directories={self.socket_dir}",
            "-c", "max_connections=100",
            # Replicas' batches may lock rows in different orders: find out fast.
            "-c", "deadlock_timeout=100ms",
        ]
        if fast:
            # No fsync: a commit still reaches the OS before it is acknowledged, so it
            # survives the server's SIGKILL (the chaos harness kills it), not a power
            # cut. synchronous_commit stays on: off, a commit acknowledged to the host
            # could still sit in the server's memory and die with it (found by the
            # chaos harness: a READY snapshot came back CREATING, then ERROR).
            options += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        return options

    def server_command(self, *, fast: bool = False) -> list[str]:
        """The server in the foreground (for a supervisor): ``postgres -D DATA …``."""
        return [
            *self._runas(), str(self._bindir() / "postgres"), "-D", str(self.data),
            *self.server_options(fast=fast),
        ]

    def start(self, *, fast: bool = False) -> None:
        """Make the cluster on first use, then start the server in the background
        (``pg_ctl``) and wait until it accepts.

        ``fast``: no fsync (throw-away clusters only: a crash of the machine may
        corrupt it; a crash of the server loses nothing)."""
        self.init(fast=fast)
        # pg_ctl hands -o to the server through a shell: quoted.
        options = shlex.join(self.server_options(fast=fast))
        self._run(
            self._bindir(), "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
            "-o", options, "start",
        )
        self.create_database("vmsnap")

    def accepts(self) -> bool:
        """Whether the server accepts connections now."""
        import psycopg

        try:
            with psycopg.connect(
                host=str(self.socket_dir), user=self.user, dbname="postgres", connect_timeout=2
            ):
                return True
        except psycopg.Error:
            return False

    def create_database(self, name: str) -> str:
        """Create a database (kept if it exists); its URL."""
        import psycopg

        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits and _ only")

        with psycopg.connect(
            host=str(self.socket_dir), user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        bindir = find_bindir()
        if bindir is None or not (self.data / "postmaster.pid").exists():
            return
        self._run(bindir, "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


__all__ = ["MIN_VERSION", "PgCluster", "PgClusterError", "find_bindir"]
