"""Small helpers shared by tests."""

from __future__ import annotations

import json
from typing import Any


def _reject_constant(token: str) -> Any:
    raise AssertionError(f"response is not strict JSON: it contains the token {token}")


def strict_json(text: str | bytes) -> Any:
    """Parse like an RFC 8259 parser: NaN/Infinity tokens are errors, not numbers."""
    return json.loads(text, parse_constant=_reject_constant)


def run_spec(
    params: dict[str, Any] | None = None,
    base_lrs: list[float] | None = None,
    metric: str | None = "val_loss",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "policy": {"name": "plateau", "version": 1, "params": params or {}},
        "base_lrs": base_lrs or [0.1],
        "labels": labels or {},
    }
    if metric is not None:
        spec["metric"] = metric
    return spec
