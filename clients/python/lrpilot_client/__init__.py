"""Client for the lrpilot learning-rate schedule service.

A training job reports its validation metric with `Client.observe` and gets back the decision:
the learning rates to use next, and why. `AsyncClient` is the same for asyncio. The package
depends on httpx only.

A training loop never sees an outage of the service (unless `on_unavailable="raise"`): the client
keeps the last decided rates, buffers what it could not send and sends it, in order, when the
service is back (see `Client`).
"""

from . import errors, models
from .async_client import AsyncClient
from .client import Client
from .errors import *  # noqa: F403 - every error is part of the API (errors.__all__)
from .models import *  # noqa: F403 - every model is part of the API (models.__all__)

__version__ = "0.1.0"

__all__ = ["AsyncClient", "Client", "__version__"]
__all__ += errors.__all__
__all__ += models.__all__
