"""The host's catalog (SQLite embedded; the SQL stays portable to PostgreSQL)."""

from vmsnap_host.store.store import Store

__all__ = ["Store"]
