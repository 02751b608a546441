"""task call counts

Decisions per task and second: ``calls_last_minute`` sums about sixty of these rows where
it counted up to a thousand decision events (``repo.calls_since``). The decisions of the
last ten minutes are counted in here at upgrade, so a burst rule sees the same numbers
across it.

Revision 0009, after 0008. Written 2026-12-02 16:35:00.000000.
Never edit a revision once it has landed: add another.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_call_counts",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("second", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "second"),
    )
    op.create_index("ix_task_call_counts_second", "task_call_counts", ["second"], unique=False)
    # Timestamps are positive: truncation is floor on both stores.
    second = "CAST(ts AS INTEGER)" if op.get_bind().dialect.name == "sqlite" else "CAST(floor(ts) AS BIGINT)"
    op.execute(
        sa.text(
            f"INSERT INTO task_call_counts (task_id, second, n) SELECT task_id, {second}, count(*) "  # noqa: S608
            "FROM audit_events WHERE type = 'decision' AND task_id IS NOT NULL AND ts >= :since "
            f"GROUP BY task_id, {second}"
        ).bindparams(since=time.time() - 600)
    )


def downgrade() -> None:
    op.drop_table("task_call_counts")
