"""``python -m tether.store.revise "what changes"``: write the next schema revision (``make revision``).

Autogenerates ``versions/rNNNN_<slug>.py`` from the difference between the table
definitions and a scratch SQLite database upgraded to head, so it needs no server. Read
and edit what it wrote before committing (a rename shows up as a drop plus an add).
"""

from __future__ import annotations

import sys
import tempfile

from alembic import command
from sqlalchemy import create_engine

from tether.store import migrations


def new_revision(message: str) -> str:
    """Write the next revision file and return its path."""
    next_id = f"{int(migrations.head()) + 1:04d}"
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/scratch.db")
        try:
            migrations.migrate(engine)
            with engine.connect() as conn:
                rev = command.revision(
                    migrations.config(conn), message=message, autogenerate=True, rev_id=next_id
                )
        finally:
            engine.dispose()
    script = rev[0] if isinstance(rev, list) else rev
    if script is None:
        raise RuntimeError("alembic wrote no revision")
    return str(script.path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].strip():
        print(
            'usage: python -m tether.store.revise "what changes"  (or: make revision m="…")', file=sys.stderr
        )
        return 2
    print(new_revision(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
