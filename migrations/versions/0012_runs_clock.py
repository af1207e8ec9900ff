"""runs.clock: what a run's steps count (steps, samples or tokens)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

A run may count its steps in samples or tokens consumed (issue 17), so that a batch-size change
does not bend its schedule. NULL is the default clock, optimizer steps: every run that exists
is one, and keeps its spec, its genesis hash and its config hash.
"""

from __future__ import annotations

import sqlalchemy as sa
from _common import runs_columns

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


upgrade, downgrade = runs_columns(("clock", sa.String(length=16)))
