"""The store: one interface over SQLite (embedded, WAL) and PostgreSQL, on SQLAlchemy Core."""

from nba.store.lease_holders import lease_holder
from nba.store.store import Store

__all__ = ["Store", "lease_holder"]
