"""Decisioning core: domain types, catalog, hard constraints, the decision pipeline and the store.

This package depends on no other package of the project (see ARCHITECTURE.md).
"""
