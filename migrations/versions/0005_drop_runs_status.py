"""drop runs.status: it never held anything but "active"

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

API v1 still serves ``"status": "active"`` in a run's document; no column needs to hold it.
SQLite drops a column in place since 3.35 (Python 3.11 ships a later one), so no batch copy
of the table is needed on either database.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("runs", "status")


def downgrade() -> None:
    status = sa.Column("status", sa.String(16), nullable=False, server_default="active")
    op.add_column("runs", status)
