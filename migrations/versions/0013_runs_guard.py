"""runs.guard: a guarded run's guard spec

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07

A run may wrap its policy with a guard (issue 18: a non-finite metric or a spike becomes a
rollback to a declared checkpoint). Like aggregate and scaling, it is part of the run as
created: canonical JSON, NULL for a run without a guard (every run that exists).
"""

from __future__ import annotations

import sqlalchemy as sa
from _common import runs_columns

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


upgrade, downgrade = runs_columns(("guard", sa.Text()))
