"""drop runs.status: it never held anything but "active"

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

API v1 still serves ``"status": "active"`` in a run's document; no column needs to hold it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("status")


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("status", sa.String(16), nullable=False, server_default="active")
        )
