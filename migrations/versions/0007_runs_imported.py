"""runs.imported: the trailer an imported run came with, and its header line

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-07

A service signs only what it decided. An imported run keeps the signature it came with: its
export carries that trailer (inside its own, under "imported") and the header line it signed,
byte for byte. NULL for every run this service created. (Revises 0005 for now: the lead chains
it after 0006 at merge.)
"""

from __future__ import annotations

import sqlalchemy as sa
from _common import runs_columns

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


upgrade, downgrade = runs_columns(("imported", sa.Text()))
