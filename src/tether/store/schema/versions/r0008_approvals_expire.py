"""approvals expire

An approval nobody answered before its expiry now ends in the state `expired` (the
leader's pass, ``Broker.expire_approvals``), where it used to stay `pending` forever.
The state column already holds any short word; what the pass and the pending gauge need
is to find `pending` rows by expiry without reading every approval ever asked for.
Approvals that expired before this revision are moved, with their audit event, by the
first pass after the upgrade.

Revision 0008, after 0007. Written 2026-12-02 15:24:10.870963.
Never edit a revision once it has landed: add another.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.create_index("ix_approvals_state_expires", ["state", "expires_at"], unique=False)


def downgrade() -> None:
    # An older release reads `expired` as a state it does not know: put them back.
    op.execute("UPDATE approvals SET state = 'pending' WHERE state = 'expired'")
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.drop_index("ix_approvals_state_expires")
