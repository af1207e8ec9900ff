"""What several migrations share: the columns that tie a row to its run, and the migration that
adds nullable columns to runs.

Alembic loads each migration by its path, outside any package, so this folder is on sys.path
for them: ``prepend_sys_path``, set by ``lrpilot.store.db.alembic_config`` and by pyproject's
[tool.alembic] for the alembic command. A released migration must build the same schema
forever: change nothing here that one of them uses, add beside it.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op


def of_run(*columns: sa.Column[object]) -> list[sa.SchemaItem]:
    """A table's run key (project, run_id), then ``columns``, then the foreign key to its run
    that deletes the row with it (the schema since 0008)."""
    return [
        sa.Column("project", sa.String(length=128), nullable=False),
        sa.Column("run_id", sa.String(length=128), nullable=False),
        *columns,
        sa.ForeignKeyConstraint(
            ["project", "run_id"], ["runs.project", "runs.run_id"], ondelete="CASCADE"
        ),
    ]


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
