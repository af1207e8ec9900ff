"""What the domain refuses; the api turns each into its HTTP status (the store raises them too:
Unavailable when the database is gone or locked)."""

from __future__ import annotations


class DomainError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RunNotFound(DomainError):
    """404: no run with that id."""


class Conflict(DomainError):
    """409: the request contradicts what is stored (another spec, another value for a step)."""


class Invalid(DomainError):
    """422: the request is well-formed but this run cannot take it (an aggregated run's
    observation without its rank); ``loc`` names the field, as a validation error does, and
    ``kind`` is the item's type."""

    def __init__(self, loc: list[str | int], message: str, kind: str = "aggregate") -> None:
        super().__init__(message)
        self.loc = loc
        self.kind = kind


class Unavailable(DomainError):
    """503: the database cannot be reached or stays locked; retrying later is safe."""


class Busy(Unavailable):
    """The database's write lock is held elsewhere right now and nothing was done: try again in
    a moment (raised instead of waiting, for a caller that must not block)."""


class RunBusy(Busy):
    """This run is locked by another transaction right now (another replica deciding it, or a
    client holding its row): only this item waits, and is tried again in a moment."""
