"""Canonical JSON: the one byte form that hashes, storage and responses agree on.

Keys are sorted, separators are tight, floats are written with ``repr`` (shortest form that
round-trips exactly) and non-finite floats become the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` so that every document is strict JSON (RFC 8259) and hashes the same everywhere.
"""

from __future__ import annotations

import hashlib
import math
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def float_token(x: float) -> str | float:
    """A float as strict JSON allows it: itself when finite, else its string name."""
    if math.isfinite(x):
        return x
    if math.isnan(x):
        return "NaN"
    return "Infinity" if x > 0 else "-Infinity"


def to_strict(obj: Any) -> Any:
    """Replace every non-finite float inside ``obj`` by its string name."""
    if isinstance(obj, float):
        return float_token(obj)
    if isinstance(obj, dict):
        return {k: to_strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_strict(v) for v in obj]
    return obj


def parse_float(x: float | int | str) -> float:
    """Inverse of ``float_token``: a JSON number or one of the three names, as a float."""
    if isinstance(x, str):
        return NON_FINITE[x]
    return float(x)


def _unencodable(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
# allow_nan=False, check_circular=False).encode, with its C encoder made once rather than at
# every call: the same bytes, about a sixth less time on an entry (verify encodes every one).
_iterencode = c_make_encoder(
    None, _unencodable, encode_basestring, None, ":", ",", True, False, False
)


def _encode(obj: Any) -> str:
    if isinstance(obj, str):  # the C encoder takes containers; a bare string is its own case
        return encode_basestring(obj)
    return "".join(_iterencode(obj, 0))


def canonical_json(obj: Any) -> str:
    try:
        return _encode(obj)
    except ValueError:  # a non-finite float somewhere: rare, so only then walk the document
        return _encode(to_strict(obj))


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def same_float(a: float, b: float) -> bool:
    """Equality a retry needs: NaN equals NaN (whatever its sign bit), 0.0 differs from -0.0."""
    return repr(a) == repr(b)
