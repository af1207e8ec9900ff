"""elastic jobs: runs.scaling (the rule) and runs.scale (the size and factor in force)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

A run created with ``scaling`` rescales its lrs when its job reports a new world_size or
global batch size; ``scale`` is what the last scale entry of its live branch put in force.
"""

from __future__ import annotations

import sqlalchemy as sa
from _common import runs_columns

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


upgrade, downgrade = runs_columns(("scaling", sa.Text()), ("scale", sa.Text()))
