"""elastic jobs: runs.scaling (the rule) and runs.scale (the size and factor in force)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

A run created with ``scaling`` rescales its lrs when its job reports a new world_size or
global batch size; ``scale`` is what the last scale entry of its live branch put in force.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scaling", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("scale", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("scale")
        batch_op.drop_column("scaling")
