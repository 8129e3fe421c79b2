"""registrations awaiting their sender's confirmation; the site key for secrets

Revision ID: 0005_register
Revises: 0004_state
Create Date: 2026-12-03 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.db

revision = "0005_register"
down_revision = "0004_state"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dbsync_connections", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "awaiting_confirmation",
                sa.Boolean(),
                nullable=False,
                server_default=sa.false(),
            )
        )
    op.create_table(
        "dbsync_site_keys",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", shared.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_dbsync_site_keys")),
    )


def downgrade() -> None:
    op.drop_table("dbsync_site_keys")
    with op.batch_alter_table("dbsync_connections", schema=None) as batch_op:
        batch_op.drop_column("awaiting_confirmation")
