"""Client for the lrpilot learning-rate schedule service.

A training job reports its validation metric with `Client.observe` and gets back the decision:
the learning rates to use next, and why. `AsyncClient` is the same for asyncio. The package
depends on httpx only.

A training loop never sees an outage of the service (unless `on_unavailable="raise"`): the client
keeps the last decided rates, buffers what it could not send and sends it, in order, when the
service is back (see `Client`).
"""

from .async_client import AsyncClient
from .client import Client
from .errors import (
    ConflictError,
    LrpilotError,
    NotFoundError,
    ResponseError,
    ServiceUnavailableError,
    ValidationError,
)
from .models import (
    Best,
    Counts,
    Decision,
    Health,
    Imported,
    LrAt,
    LrChange,
    LrsAhead,
    LrsInForce,
    LrsRange,
    Page,
    PendingObservation,
    Policy,
    PolicyInfo,
    Resized,
    Rewound,
    Run,
    RunPage,
    Simulated,
    SimulatedDecision,
    Summary,
    Verified,
    decode_float,
    encode_float,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Best",
    "Client",
    "ConflictError",
    "Counts",
    "Decision",
    "Health",
    "Imported",
    "LrAt",
    "LrChange",
    "LrpilotError",
    "LrsAhead",
    "LrsInForce",
    "LrsRange",
    "NotFoundError",
    "Page",
    "PendingObservation",
    "Policy",
    "PolicyInfo",
    "Resized",
    "ResponseError",
    "Rewound",
    "Run",
    "RunPage",
    "ServiceUnavailableError",
    "Simulated",
    "SimulatedDecision",
    "Summary",
    "ValidationError",
    "Verified",
    "__version__",
    "decode_float",
    "encode_float",
]
