"""Small helpers shared by tests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lrpilot.policies.base import Frozen, Policy, State


def _reject_constant(token: str) -> Any:
    raise AssertionError(f"response is not strict JSON: it contains the token {token}")


# A JSON string holds these raw (RFC 8259 escapes only the controls below U+0020), and the
# service writes them so; str.splitlines, and httpx's iter_lines with it, also splits at them,
# so an NDJSON body split that way has lines that are not JSON (split at "\n" alone).
SPLITS_LINES = "a\u2028b\u2029c\x85d"


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


# -- audit: metric streams, list pages and bundles (tests/api/, tests/cli/) -----------------------


def plateau_stream(
    n: int, seed: int = 1, start_step: int = 10, every: int = 10
) -> list[tuple[int, float]]:
    """A deterministic validation-loss stream, (step, value) pairs: spells of improvement and
    spells of stalling (slightly above the best so far), of varying lengths, so that a plateau
    policy reduces now and then and other params decide differently."""
    x = seed * 0x9E3779B97F4A7C15 % 2**64
    level, out, left, improving = 1.0, [], 0, True

    def draw() -> float:
        nonlocal x
        x = (x * 6364136223846793005 + 1442695040888963407) % 2**64
        return (x >> 11) / 2**53

    for i in range(n):
        if left == 0:
            improving, left = not improving, 2 + int(draw() * 6)
        left -= 1
        if improving:
            level *= 0.9 + 0.05 * draw()
            value = level
        else:
            value = level * (1.0 + 0.05 * draw())
        out.append((start_step + i * every, value))
    return out


def raw_items(page: str) -> list[str]:
    """The items of a list response (``{"items": [...], ...}``) exactly as the service wrote
    each one, not parsed and encoded again: for byte-for-byte comparisons."""
    decoder = json.JSONDecoder()
    pos = page.index('"items"') + len('"items"')

    def skip(pos: int, chars: str) -> int:
        while page[pos] in chars:
            pos += 1
        return pos

    pos = skip(pos, " \t\r\n:")
    assert page[pos] == "[", page[:200]
    pos, items = pos + 1, []
    while True:
        pos = skip(pos, " \t\r\n")
        if page[pos] == "]":
            return items
        _, end = decoder.raw_decode(page, pos)
        items.append(page[pos:end])
        pos = skip(end, " \t\r\n")
        if page[pos] == ",":
            pos += 1


def canonical(doc: Any) -> str:
    """Canonical JSON as DESIGN.md defines it (sorted keys, tight separators, floats by repr),
    written here independently of the service's code."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sealed(doc: dict[str, Any]) -> str:
    """``doc`` with its ``hash`` recomputed: SHA-256 of the canonical decision without it."""
    import hashlib

    body = {k: v for k, v in doc.items() if k != "hash"}
    body["hash"] = hashlib.sha256(canonical(body).encode()).hexdigest()
    return canonical(body)


def rechained(lines: list[str]) -> list[str]:
    """A bundle's lines (header, decisions, trailer) with every decision's prev_hash and hash
    and the trailer's count, head_hash and header_hash recomputed: what whoever can write the
    file can do after an edit. The trailer loses its signature (only the key's holder can
    sign). The first decision links to the header's run, as the service links it."""
    from lrpilot.entries import run_genesis

    try:
        prev = run_genesis(json.loads(lines[0])["run"])
    except (UnicodeEncodeError, KeyError, TypeError):  # a header no hash can be taken of
        prev = "0" * 64
    out = [lines[0]]
    for line in lines[1:-1]:
        doc = json.loads(line)
        doc["prev_hash"] = prev
        text = sealed(doc)
        out.append(text)
        prev = json.loads(text)["hash"]
    header_hash = hashlib.sha256(lines[0].encode()).hexdigest()
    end = {"count": len(lines) - 2, "head_hash": prev, "header_hash": header_hash}
    out.append(canonical({"end": end}))
    return out


def bundle_text(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def lrpilot_cli(*args: str, catch_exceptions: bool = False) -> Any:
    """``lrpilot ARGS`` in this process (typer's CliRunner): a click Result. An exception the
    command does not handle propagates (a traceback is a test failure, not an exit code),
    unless ``catch_exceptions``: then it is the Result's ``exception``, for a test that
    collects every crash of many invocations before failing."""
    from typer.testing import CliRunner

    from lrpilot.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=catch_exceptions)


def one_line(text: str) -> str:
    """Output with every run of whitespace made one space (Rich wraps long lines)."""
    return " ".join(text.split())


def make_token(
    database_url: str,
    project: str,
    role: str,
    name: str | None = None,
    expires_at: str | None = None,
) -> str:
    """A new API token in the (migrated) database, as `lrpilot token create` stores it: its
    secret. ``expires_at`` may lie in the past (an expired token)."""
    from lrpilot.domain.deciding import now
    from lrpilot.settings import Settings
    from lrpilot.store.records import new_secret, secret_hash
    from lrpilot.store.runs import Store
    from lrpilot.store.tokens import Tokens

    secret = new_secret()
    store = Store(Settings(database_url=database_url))
    try:
        label = name or f"{project}-{role}-{secret[-6:]}"
        Tokens(store).create(label, project, role, secret_hash(secret), now(), expires_at)
    finally:
        store.close()
    return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def refusal_names(policy: Any, params: dict[str, Any], base_lrs: tuple[float, ...], field: str,
                  words: str) -> bool:  # fmt: skip
    """``policy.resolve(params, base_lrs)`` refuses, with an error located at ``params.<field>``
    whose message says ``words``: True, or AssertionError listing the errors it gave."""
    from lrpilot.policies import PolicyError

    try:
        policy.resolve(params, base_lrs)
    except PolicyError as exc:
        located = [(".".join(map(str, loc)), msg) for loc, msg in exc.errors]
        assert any(at == f"params.{field}" and words in msg for at, msg in located), located
        return True
    raise AssertionError(f"{params} was taken")


def started(
    family: str, version: int, params: dict[str, Any], base: Sequence[float]
) -> tuple[Policy, Frozen, State]:
    """``family@version`` as a run created with ``params`` over ``base`` holds it: the policy,
    its resolved params and its state at step 0."""
    from lrpilot.policies import get_policy

    policy = get_policy(family, version)
    resolved = policy.resolve(params, tuple(base))
    return policy, resolved, policy.init(resolved, tuple(base))
