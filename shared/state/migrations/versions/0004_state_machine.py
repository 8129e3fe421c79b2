"""who suspended a connection; signed control calls and their nonces

Revision ID: 0004_state
Revises: 0003_beat
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.db

revision = "0004_state"
down_revision = "0003_beat"
branch_labels = None
depends_on = None

# The reasons earlier versions wrote, so a suspension made before this
# migration keeps its owner; any other reason was the operator's.
PEER_REASON = "Suspended by the peer site"
MODULE_REASON = "DB Sync module disabled"
VERIFY_REASON = "Remote site reports connection not found"


def upgrade() -> None:
    with op.batch_alter_table("dbsync_connections", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("suspended_by", sa.String(length=20), nullable=True)
        )
        batch_op.add_column(
            sa.Column("signing_key", sa.String(length=64), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "peer_signs", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )
    connections = sa.table(
        "dbsync_connections",
        sa.column("status", sa.String),
        sa.column("suspended_reason", sa.Text),
        sa.column("suspended_by", sa.String),
    )
    suspended = connections.c.status == "suspended"
    for reason, owner in (
        (PEER_REASON, "peer"),
        (MODULE_REASON, "module"),
        (VERIFY_REASON, "verify"),
    ):
        op.execute(
            connections.update()
            .where(suspended, connections.c.suspended_reason == reason)
            .values(suspended_by=owner)
        )
    op.execute(
        connections.update()
        .where(suspended, connections.c.suspended_by.is_(None))
        .values(suspended_by="operator")
    )

    op.create_table(
        "dbsync_control_nonces",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("seen_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_dbsync_control_nonces")),
    )
    with op.batch_alter_table("dbsync_control_nonces", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dbsync_control_nonces_seen_at"), ["seen_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("dbsync_control_nonces", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dbsync_control_nonces_seen_at"))
    op.drop_table("dbsync_control_nonces")
    with op.batch_alter_table("dbsync_connections", schema=None) as batch_op:
        batch_op.drop_column("peer_signs")
        batch_op.drop_column("signing_key")
        batch_op.drop_column("suspended_by")
