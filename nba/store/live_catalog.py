"""The catalog a long-running process serves from: the last one read, read again when the store's changes."""

from __future__ import annotations

import threading

from nba.catalog_view import CatalogView
from nba.errors import StoreUnavailable
from nba.store.store import Store


class LiveCatalog:
    """The catalog as last read from the store; `current` notices another process's change with one small read."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self.view = store.load_catalog()

    def current(self) -> CatalogView:
        """The catalog as the store has it now (a version read; the whole catalog only when it changed). While
        the store is down the last one read stands: nobody can change it meanwhile."""
        try:
            if self._store.catalog_version() != self.view.version:
                return self.refresh()
        except StoreUnavailable:
            pass
        return self.view

    def refresh(self) -> CatalogView:
        """Read the catalog again (after an admin change here or in another process)."""
        with self._lock:
            view = self._store.load_catalog()
            self.view = view
            return view
