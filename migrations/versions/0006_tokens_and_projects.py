"""tokens, the project a run belongs to, and whose token posted a rank's report

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

Runs made before projects existed go to project "default", the project of open mode (no
tokens): nothing they served changes.
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
        "tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("project", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.String(length=40), nullable=False),
        sa.Column("expires_at", sa.String(length=40), nullable=True),
        sa.Column("revoked_at", sa.String(length=40), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("token_hash"),
    )
    project = sa.Column("project", sa.String(length=128), nullable=False, server_default="default")
    op.add_column("runs", project)
    # whose token posted a rank's report, until its step's decision records it
    op.add_column("reports", sa.Column("by", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reports") as batch_op:
        batch_op.drop_column("by")
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_column("project")
    op.drop_table("tokens")
