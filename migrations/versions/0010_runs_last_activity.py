"""runs.last_action, runs.last_at: the run list's state and activity, with an index

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

The dashboard lists runs by last activity and filters them by state (stopped: the last entry
is a stop). Read from each run's last entry, that is a join and a JSON parse per run of the
project, whatever the page; two columns written with the head (the entry last_seq's action
and created_at; the run's created_at before any entry) and an index on (project, last_at,
run_id) make a page one index range. The runs that exist get them from their last entry.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_LAST = (
    "FROM decisions d WHERE d.project = runs.project AND d.run_id = runs.run_id "
    "AND d.seq = runs.last_seq"
)


def upgrade() -> None:
    op.add_column("runs", sa.Column("last_action", sa.String(length=32), nullable=True))
    op.add_column("runs", sa.Column("last_at", sa.String(length=40), nullable=True))
    postgres = op.get_bind().dialect.name == "postgresql"
    created_at = (
        "(d.body::json ->> 'created_at')" if postgres else "json_extract(d.body, '$.created_at')"
    )
    op.execute(
        f"UPDATE runs SET last_action = (SELECT d.action {_LAST}), "
        f"last_at = COALESCE((SELECT {created_at} {_LAST}), created_at)"
    )
    op.create_index("ix_runs_project_activity", "runs", ["project", "last_at", "run_id"])


def downgrade() -> None:
    op.drop_index("ix_runs_project_activity", table_name="runs")
    op.drop_column("runs", "last_at")
    op.drop_column("runs", "last_action")
