"""Alembic migrations of the index schema (``aepacs db upgrade``); :mod:`aepacs.store.migrate` runs them."""
