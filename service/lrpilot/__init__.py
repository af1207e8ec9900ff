"""lrpilot: a deterministic, auditable learning-rate schedule service."""

__version__ = "0.1.0"
