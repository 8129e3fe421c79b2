"""a connection's peer API prefix (a PhoenixKit site answers under /phoenix_kit)

Revision ID: 0007_peer
Revises: 0004_state
Create Date: 2026-11-27 20:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_peer"
down_revision = "0005_register"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("dbsync_connections", "dbsync_peer_notices"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("peer_prefix", sa.String(length=255), nullable=True)
            )


def downgrade() -> None:
    for table in ("dbsync_peer_notices", "dbsync_connections"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("peer_prefix")
