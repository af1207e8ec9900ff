"""Settings, from flags or the environment (LRPILOT_*)."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_DATABASE_URL = "sqlite:///lrpilot.db"  # a file in the working directory


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL

    @classmethod
    def from_env(cls) -> Settings:
        return cls(database_url=os.environ.get("LRPILOT_DATABASE_URL", DEFAULT_DATABASE_URL))
