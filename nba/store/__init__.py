"""The store: one interface over SQLite (embedded, WAL) and PostgreSQL, on SQLAlchemy Core."""

from nba.store.store import Store, lease_holder

__all__ = ["Store", "lease_holder"]
