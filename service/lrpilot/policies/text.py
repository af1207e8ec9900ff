"""How a reason writes numbers, lrs and counts.

Frozen, as the primitives of ``lrpilot.policies.common`` are: a reason is part of every logged
decision and of its hash, so changing a word or a digit here changes what every released
version says, and verify would fail their logs.
"""

from __future__ import annotations


def fmt(x: float) -> str:
    """A number in a reason: exact (repr), so a reader can redo the comparison."""
    return repr(x)


def fmt_lrs(lrs: tuple[float, ...]) -> str:
    if len(lrs) == 1:
        return f"lr {fmt(lrs[0])}"
    return "lrs [" + ", ".join(fmt(x) for x in lrs) + "]"


def fmt_change(old: tuple[float, ...], new: tuple[float, ...]) -> str:
    if len(old) == 1:
        return f"lr {fmt(old[0])} -> {fmt(new[0])}"
    return (
        "lrs [" + ", ".join(fmt(x) for x in old) + "] -> [" + ", ".join(fmt(x) for x in new) + "]"
    )


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
