"""What the store refuses; the api turns each into its HTTP status."""

from __future__ import annotations


class StoreError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RunNotFound(StoreError):
    """404: no run with that id."""


class Conflict(StoreError):
    """409: the request contradicts what is stored (another spec, another value for a step)."""


class Unavailable(StoreError):
    """503: the database cannot be reached or stays locked; retrying later is safe."""
