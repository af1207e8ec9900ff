"""a run's key is (project, run_id): the same run id in two projects is two runs

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

runs gets the primary key (project, run_id); decisions, reports and run_labels get a
``project`` column, part of their primary keys and of their foreign key to runs. Existing rows
go to the project their run has (rows without a run, what an import killed halfway left, to
"default", where the journal that names them looks for them).

SQLite cannot change a primary key in place: its tables are rebuilt (batch mode). Downgrading
fails while two projects hold runs of one id: they cannot share one key again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# the rows of a run, and the columns that key them within it
CHILDREN = {"decisions": ("seq",), "reports": ("step", "rank"), "run_labels": ("key",)}
INDEX = "ix_decisions_run_live_step"
# SQLite's constraints have no names: batch mode names them by these, to drop them
NAMES = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
}


def _rekey(run_key: list[str]) -> None:
    """Every table's primary key and foreign key over ``run_key`` (its run's key)."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    fk = "fk_{}_run_id_runs" if sqlite else "{}_run_id_fkey"
    pk = "pk_{}" if sqlite else "{}_pkey"
    if not sqlite:  # the references to runs' key go before it does
        for table in CHILDREN:
            op.drop_constraint(fk.format(table), table, type_="foreignkey")
    with op.batch_alter_table("runs", recreate="auto", naming_convention=NAMES) as batch:
        batch.drop_constraint(pk.format("runs"), type_="primary")
        batch.create_primary_key(pk.format("runs"), run_key)
    for table, own in CHILDREN.items():
        with op.batch_alter_table(table, recreate="auto", naming_convention=NAMES) as batch:
            if sqlite:
                batch.drop_constraint(fk.format(table), type_="foreignkey")
            batch.drop_constraint(pk.format(table), type_="primary")
            batch.create_primary_key(pk.format(table), [*run_key, *own])
            batch.create_foreign_key(fk.format(table), "runs", run_key, run_key, ondelete="CASCADE")


def upgrade() -> None:
    for table in CHILDREN:
        op.add_column(table, sa.Column("project", sa.String(length=128), nullable=True))
        op.execute(
            f"UPDATE {table} SET project = COALESCE((SELECT runs.project FROM runs "
            f"WHERE runs.run_id = {table}.run_id), 'default')"
        )
        with op.batch_alter_table(table) as batch:
            batch.alter_column("project", existing_type=sa.String(length=128), nullable=False)
    op.drop_index(INDEX, table_name="decisions")
    _rekey(["project", "run_id"])
    op.create_index(INDEX, "decisions", ["project", "run_id", "superseded", "step"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="decisions")
    _rekey(["run_id"])
    op.create_index(INDEX, "decisions", ["run_id", "superseded", "step"])
    for table in CHILDREN:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("project")
