"""legacy sightings

Revision 0006, after 0005. Written 2026-12-02 02:55:00.
Never edit a revision once it has landed: add another.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "legacy_sightings",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("database", sa.String(length=128), nullable=False),
        sa.Column("client", sa.String(length=256), nullable=False),
        sa.Column("application", sa.String(length=256), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("sessions_max", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", "database", "client", "application"),
    )


def downgrade() -> None:
    op.drop_table("legacy_sightings")
