"""NDJSON lines as a bundle is written: each ends at a "\n", and only there.

httpx's ``iter_lines`` splits as ``str.splitlines`` does, at U+2028, U+2029 and U+0085 too,
which a JSON string may hold as they are (RFC 8259 escapes only the controls below U+0020):
the service writes them so, and a label or a checkpoint ref with one would come back as two
halves that are not JSON. The bytes are split before they are decoded, which is safe in UTF-8:
no byte of a multi-byte character is a "\n"."""

from __future__ import annotations


class LineSplitter:
    """Fed a body's chunks as they come, hands back each line once its "\n" has come."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []  # the line begun, in pieces: one join when it ends

    def feed(self, chunk: bytes) -> list[str]:
        *ended, rest = chunk.split(b"\n")
        lines = []
        for piece in ended:
            self._pieces.append(piece)
            lines.append(b"".join(self._pieces).decode("utf-8"))
            self._pieces.clear()
        if rest:
            self._pieces.append(rest)
        return lines

    def end(self) -> list[str]:
        """The last line when the body did not end with a "\n" (a bundle always does)."""
        last = b"".join(self._pieces).decode("utf-8")
        self._pieces.clear()
        return [last] if last else []
