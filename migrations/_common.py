"""What several migrations share: the tables of a run's rows (their run key and foreign key),
and the migration that adds nullable columns to runs.

Alembic loads each migration by its path, outside any package, so this folder is on sys.path
for them: ``prepend_sys_path``, set by ``lrpilot.store.db.alembic_config`` and by pyproject's
[tool.alembic] for the alembic command. A released migration must build the same schema
forever: change nothing here that one of them uses, add beside it.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op


def create_run_table(name: str, key: list[str], *columns: sa.Column[object]) -> None:
    """Create the table ``name`` of a run's rows (the schema since 0008): its run key (project,
    run_id), then ``columns``; the foreign key to its run, which deletes the rows with it; the
    primary key, the run key and then ``key``."""
    op.create_table(
        name,
        sa.Column("project", sa.String(length=128), nullable=False),
        sa.Column("run_id", sa.String(length=128), nullable=False),
        *columns,
        sa.ForeignKeyConstraint(
            ["project", "run_id"], ["runs.project", "runs.run_id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("project", "run_id", *key),
    )


def runs_columns(
    *columns: tuple[str, sa.types.TypeEngine[object]],
) -> tuple[Callable[[], None], Callable[[], None]]:
    """``upgrade`` and ``downgrade`` of a migration that adds nullable ``columns`` (name, type)
    to runs (NULL in every run that exists) and drops them again, the last first."""

    def upgrade() -> None:
        for name, type_ in columns:
            # a Column joins one table only: fresh ones for each upgrade
            op.add_column("runs", sa.Column(name, type_, nullable=True))

    def downgrade() -> None:
        for name, _ in reversed(columns):
            op.drop_column("runs", name)

    return upgrade, downgrade
