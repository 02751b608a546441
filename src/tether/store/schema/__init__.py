"""Alembic script directory of the store: ``env.py`` and one file per revision in ``versions/``.

Run through :mod:`tether.store.migrations`, never the ``alembic`` command line: the
broker applies pending revisions at start under a lock, ``tether store upgrade`` does it
for operators, and ``make revision m="…"`` writes a new one (docs/architecture.md).
"""
