"""A run as a bundle (NDJSON): its lines written and read. Pure, no database.

A bundle is one line of header, one line an entry, one line of trailer:

    {"bundle": "lrpilot/1", "run": {run_id, policy, base_lrs, metric, labels, config_hash, ...}}
    <each entry's canonical JSON, exactly as stored and served, in seq order>
    {"end": {"count": n, "head_hash": "...", "header_hash": "...", "signature": {...}?}}

The header's run is a ``lrpilot.spec.RunStored``; the check that proves a bundle is
``lrpilot.audit.verify``'s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lrpilot.canonical import canonical_json, parse_float, sha256_hex, to_strict
from lrpilot.entries import NOT_DECISIONS, Kind, Rewound, is_superseded
from lrpilot.policies.base import Extras, extras_of
from lrpilot.spec import UNSTORABLE_MSG, RunStored, is_storable

BUNDLE_FORMAT = "lrpilot/1"
# The longest line a bundle may have (its line end aside): a line is refused once this much is
# read, never read whole. An entry of many ranks is the longest a service writes.
MAX_LINE_BYTES = 16 << 20
_MAX_ECHO = 200  # characters of a found or expected string that a Mismatch keeps
_BOM = b"\xef\xbb\xbf"
# the escapes that may spell a NUL or a lone surrogate: only a line with one is parsed to look
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{1,256}={0,2}")
_MAX_COUNT = 2**63 - 1  # what a BIGINT seq holds
_REWIND_MARK = '"action":"rewind"'
_REWIND_MARK_RAW = _REWIND_MARK.encode()


class Mismatch(Exception):
    """The first place where a log stops being what was written (or what the policy decides)."""

    def __init__(
        self, line: int | None, seq: int | None, what: str, expected: Any = None, found: Any = None
    ) -> None:
        self.line, self.seq, self.what = line, seq, what
        self.expected, self.found = _echo(expected), _echo(found)
        where = ", ".join(
            part
            for part in (
                f"line {line}" if line is not None else "",
                f"seq {seq}" if seq is not None else "",
            )
            if part
        )
        super().__init__(f"{where}: {what}" if where else what)

    def __reduce__(self) -> tuple[type[Mismatch], tuple[Any, ...]]:
        # from a verifying process to its parent (lrpilot.audit.parallel): made again whole
        return (Mismatch, (self.line, self.seq, self.what, self.expected, self.found))

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = to_strict(
            {
                "line": self.line,
                "seq": self.seq,
                "message": str(self),
                "expected": self.expected,
                "found": self.found,
            }
        )
        return doc


def _echo(value: Any) -> Any:
    """A value a Mismatch quotes, as a report can print it: a string cut short and with no
    NUL or lone surrogate left raw (they are what some bundles are refused for)."""
    if not isinstance(value, str):
        return value
    if len(value) > _MAX_ECHO:
        value = value[:_MAX_ECHO] + "…"
    if not is_storable(value):
        value = value.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")
    return value


# -- one line's encoding: every line of a bundle, header and trailer included ------------------


def check_line(raw: bytes, line: int) -> None:
    """Refuse a line that no database can store or no report can print: a byte-order mark, a
    NUL (a byte, or the escape ``\\u0000``) or a lone surrogate (an escape of one half of a
    pair without the other). The one encoding check of a bundle, for verify and import alike;
    UTF-8 itself is checked as each line is read."""
    if raw.startswith(_BOM):
        raise Mismatch(
            line, None, "starts with a byte-order mark (U+FEFF): a bundle is UTF-8 without one"
        )
    if b"\x00" in raw:
        raise Mismatch(line, None, "holds a NUL byte")
    if b"\\u" not in raw or _SUSPECT_ESCAPE.search(raw) is None:  # the scan first: cheaper
        return
    stack: list[tuple[str, Any]] = [("", _parse(raw, line))]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if not is_storable(item):
                raise Mismatch(line, None, f"{where or 'a string'} {UNSTORABLE_MSG}")
        elif isinstance(item, dict):
            for key, value in item.items():
                if not is_storable(key):
                    raise Mismatch(line, None, f"a member name {UNSTORABLE_MSG}")
                stack.append((f"{where}.{key}" if where else key, value))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", value) for i, value in enumerate(item))


# -- the bundle's own lines -------------------------------------------------------------------


def header_line(run: RunStored) -> str:
    return canonical_json({"bundle": BUNDLE_FORMAT, "run": run.header_doc()})


def trailer_line(
    header: str,
    count: int,
    head_hash: str,
    signature: dict[str, str] | None = None,
    imported: dict[str, Any] | None = None,
) -> str:
    """The last line: the count, the head, the hash of the header line (which no decision's
    hash covers), for a run that began as an import the trailer it was imported with
    (``imported``, its signature included), and the signature over all of that when the
    service has a key and decided some of the log."""
    end: dict[str, Any] = {
        "count": count,
        "head_hash": head_hash,
        "header_hash": sha256_hex(header),
    }
    if imported is not None:
        end["imported"] = imported
    if signature is not None:
        end["signature"] = signature
    return canonical_json({"end": end})


def parse_header(text: str | bytes, line: int = 1) -> RunStored:
    """The run a header line describes: a run as the service stores it (one model checks a
    header and a created run alike), or a Mismatch naming the line."""
    doc = _parse(text, line)
    if (
        doc.get("bundle") != BUNDLE_FORMAT
        or not isinstance(doc.get("run"), dict)
        or set(doc) != {"bundle", "run"}
    ):
        raise Mismatch(
            line,
            None,
            f'not an lrpilot bundle: the first line must be {{"bundle": "{BUNDLE_FORMAT}", '
            '"run": {...}}',
        )
    try:
        return RunStored.model_validate(doc["run"])
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'run'}: {str(e['msg'])[:200]}" for e in exc.errors()
        )
        raise Mismatch(line, None, f"the header's run is not a valid run spec: {errors}") from None


def parse_trailer(text: str | bytes, line: int) -> dict[str, Any] | None:
    """The trailer's ``end`` object, or None when the line is not a trailer."""
    if not (text.startswith(b'{"end":') if isinstance(text, bytes) else text.startswith('{"end":')):
        return None
    doc = _parse(text, line)
    end = doc.get("end")
    if set(doc) != {"end"} or not isinstance(end, dict):
        raise Mismatch(line, None, 'the trailer must be {"end": {"count": n, "head_hash": ...}}')
    _check_trailer(end, line)
    return end


_TRAILER_FIELDS = ("count", "head_hash", "header_hash", "imported", "signature")
# A log imported, continued, exported and imported again: each hop nests the trailer before.
MAX_IMPORT_HOPS = 16


def _check_trailer(end: dict[str, Any], line: int, what: str = "the trailer's") -> None:
    """Every member of a trailer, like the API's own fields: its type and its length; and
    the trailers it records as imported (``imported``, nested a hop each), alike."""
    for _ in range(MAX_IMPORT_HOPS + 1):
        _check_end_members(end, line, what)
        inner = end.get("imported")
        if inner is None:
            return
        if not isinstance(inner, dict) or type(inner.get("count")) is not int:
            raise Mismatch(line, None, f"{what} imported must be a trailer, as bundles have")
        if inner["count"] > end["count"]:
            raise Mismatch(line, None, f"{what} imported count is beyond its own count")
        end, what = inner, f"{what} imported"
    raise Mismatch(line, None, f"more than {MAX_IMPORT_HOPS} imports nested in the trailer")


def _check_end_members(end: dict[str, Any], line: int, what: str) -> None:
    for key in end:
        if key not in _TRAILER_FIELDS:
            raise Mismatch(
                line,
                None,
                f"{what} member {key!r:.60} is not one that bundles have (they have "
                f"{', '.join(_TRAILER_FIELDS)})",
            )
    count = end.get("count")
    if type(count) is not int or not 0 <= count <= _MAX_COUNT:
        raise Mismatch(line, None, f"{what} count must be an integer in [0, 2**63)")
    for key in ("head_hash", "header_hash"):
        digest = end.get(key)
        if not isinstance(digest, str) or _HEX64.fullmatch(digest) is None:
            raise Mismatch(line, None, f"{what} {key} must be 64 lowercase hex digits")
    signature = end.get("signature")
    if signature is None and "signature" not in end:
        return
    if (
        not isinstance(signature, dict)
        or set(signature) != {"algorithm", "key_id", "value"}
        or not all(isinstance(v, str) for v in signature.values())
        or len(signature["algorithm"]) > 32
        or _KEY_ID.fullmatch(signature["key_id"]) is None
        or _BASE64.fullmatch(signature["value"]) is None
    ):
        raise Mismatch(
            line,
            None,
            f"{what} signature must be {{algorithm, key_id (16 hex digits), value "
            "(base64)}, as the service writes it",
        )


def _parse(text: str | bytes, line: int) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:  # deep nesting: not a decision
        raise Mismatch(line, None, f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Mismatch(line, None, "not a JSON object")
    return doc


def rewinds_of(bodies: Iterable[str | bytes]) -> list[Rewound]:
    """The rewind entries of a log, in seq order (a first pass, before a replay or a check)."""
    found = []
    for body in bodies:
        if isinstance(body, bytes):
            if _REWIND_MARK_RAW not in body:
                continue
        elif _REWIND_MARK not in body:
            continue
        with_rewind = _maybe_json(body)
        if with_rewind is None or with_rewind.get("action") != Kind.REWIND:
            continue
        rewind, seq = with_rewind.get("rewind"), with_rewind.get("seq")
        if isinstance(rewind, dict) and type(seq) is int:
            to_step = rewind.get("to_step")
            if type(to_step) is int:
                found.append(Rewound(seq, to_step))
    return sorted(found, key=lambda r: r.seq)


def _maybe_json(text: str | bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def read_lines(path: Path, max_line: int = MAX_LINE_BYTES) -> Iterator[str]:
    """A bundle file's lines (``read_raw``'s), each decoded on its own: bytes that are not
    UTF-8 are a Mismatch naming the line, not a crash in the middle of a check."""
    for number, raw in enumerate(read_raw(path, max_line), start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Mismatch(number, None, f"not UTF-8 ({exc.reason} at byte {exc.start})") from None


def read_raw(path: Path, max_line: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """A bundle file's lines as bytes: what ``check_bundle`` reads (UTF-8 is checked as each
    line is parsed, the hash is of the bytes). A line longer than ``max_line`` bytes is a
    Mismatch naming it, found with at most that much of it read."""
    with path.open("rb") as f:
        number = 0
        while raw := f.readline(max_line + 2):  # room for the line end, "\r\n"
            number += 1
            if len(raw) - len(b"\r\n") >= max_line and len(raw.rstrip(b"\r\n")) > max_line:
                raise Mismatch(
                    number,
                    None,
                    f"the line is longer than {max_line} bytes (LRPILOT_MAX_BUNDLE_LINE_BYTES)",
                )
            yield raw


def numbered(lines: Iterable[str], start: int = 1) -> Iterator[tuple[int, str]]:
    """Lines without their line ends, numbered from ``start``; blank lines skipped."""
    for number, text in enumerate(lines, start=start):
        text = text.rstrip("\r\n")
        if text:
            yield number, text


def numbered_raw(lines: Iterable[bytes], start: int = 1) -> Iterator[tuple[int, bytes]]:
    """``numbered`` for lines read as bytes."""
    for number, raw in enumerate(lines, start=start):
        raw = raw.rstrip(b"\r\n")
        if raw:
            yield number, raw


def read_header(path: Path, max_line: int = MAX_LINE_BYTES) -> RunStored:
    """The run a bundle file's header describes, checked as ``check_bundle`` checks it, with
    no more than its first line read."""
    for number, raw in numbered_raw(read_raw(path, max_line)):
        check_line(raw, number)
        return parse_header(raw, number)
    raise Mismatch(None, None, "the bundle is empty")


def bundle_run(open_lines: Callable[[], Iterable[str]]) -> RunStored:
    """The run a bundle's header describes."""
    for number, text in numbered(open_lines()):
        return parse_header(text, number)
    raise Mismatch(None, None, "the bundle is empty")


@dataclass(frozen=True, slots=True)
class Recorded:
    """One decision of a log's live branch, as recorded: the observation and what was decided."""

    seq: int
    step: int
    value: float
    action: str
    lrs: tuple[float, ...]
    scale: float = 1.0  # the scaling rule's factor on the lrs (elastic jobs)
    # what the policy scheduled beside the lrs (None: nothing), as the decision says
    momentum: tuple[float, ...] | None = None
    weight_decay: tuple[float, ...] | None = None

    def extras(self) -> Extras:
        """What was scheduled beside the lrs, by name: only what was."""
        return extras_of(self)


@dataclass(frozen=True, slots=True)
class Asked:
    """An operator's entry that changes what the policy decides next: a cooldown on demand
    (``action`` start_cooldown, ``args`` its ``cooldown`` member) or a retime (its ``retime``);
    ``recorded`` False for one a what-if adds (what would a retime do?)."""

    action: str
    args: dict[str, Any]
    recorded: bool = True


# the entries a what-if applies as they come, beside the decisions, and their member
ASKED = {Kind.COOLDOWN.value: "cooldown", Kind.RETIME.value: "retime"}


def live_branch(open_lines: Callable[[], Iterable[str]]) -> Iterator[Recorded | Asked]:
    """The decisions of a bundle's live branch (not superseded by a rewind; rewind and scale
    entries left out) and its cooldowns and retimes (``Asked``), in order: the recorded
    stream a what-if replays. Not checked: ``lrpilot.audit.verify.check_bundle`` does that."""
    rewinds = rewinds_of(text for _, text in numbered(open_lines()))
    for number, text in numbered(open_lines()):
        if number == 1 or text.startswith('{"end":'):
            continue
        doc = _parse(text, number)
        seq, step = doc.get("seq"), doc.get("step")
        if not isinstance(seq, int) or not isinstance(step, int):
            raise Mismatch(number, None, "a decision without an integer seq and step")
        if is_superseded(seq, step, rewinds):
            continue
        if doc.get("action") in ASKED or doc.get("action") not in NOT_DECISIONS:
            yield recorded_of(doc)


def recorded_of(doc: dict[str, Any]) -> Recorded | Asked:
    """A stored decision (or cooldown, or retime) as the what-if reads it. A guarded run's cut
    on the lrs (its rollbacks: ``lrpilot.guard``) stands in the what-if as its resizes do: on
    ``scale``."""
    member = ASKED.get(doc["action"])
    if member is not None:
        return Asked(doc["action"], dict(doc[member]))
    scale = parse_float(doc.get("scale", 1.0))
    state = doc.get("state")
    if isinstance(state, dict) and state.keys() >= _GUARDED:
        scale *= parse_float(state["cut"])
    return Recorded(
        doc["seq"],
        doc["step"],
        parse_float(doc["value"]),
        str(doc["action"]),
        tuple(parse_float(x) for x in doc["lrs"]),
        scale,
        **{k: tuple(parse_float(x) for x in v) for k, v in extras_of(doc).items()},
    )


_GUARDED = {"policy", "cut", "rollbacks", "stopped"}  # a guarded run's state (lrpilot.guard)


def entry_binding(open_lines: Callable[[], Iterable[str]], seq: int, hash_: str) -> str | None:
    """Whether a checkpoint saved under entry ``seq`` with hash ``hash_`` is bound to this
    bundle's log: None when the entry is there with that hash and on the live branch, else why
    not (no such entry, another hash: another run's; superseded: a branch since rewound).
    Verify the bundle first: this reads it as recorded."""
    rewinds = rewinds_of(text for _, text in numbered(open_lines()))
    for number, text in numbered(open_lines()):
        if number == 1 or text.startswith('{"end":'):
            continue
        doc = _parse(text, number)
        if doc.get("seq") != seq:
            continue
        step = doc.get("step")
        if doc.get("hash") != hash_:
            return f"entry {seq} of the log has hash {doc.get('hash')}, not {hash_}"
        if isinstance(step, int) and is_superseded(seq, step, rewinds):
            return (
                f"entry {seq} (step {step}) is on a branch since rewound: a later rewind "
                "superseded it"
            )
        return None
    return f"the log has no entry {seq}"
