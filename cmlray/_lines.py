"""Cutting a byte stream into whole lines of text.

A line is emitted only once its newline arrives (or at end of stream), so a
line is never split into fragments however the program's writes were
chunked. Invalid UTF-8 becomes replacement characters. A line longer than
``max_line_bytes`` without a newline is emitted in pieces of that size, so a
program that never writes a newline cannot grow memory without bound.
"""

from __future__ import annotations

MAX_LINE_BYTES = 8 << 20


class LineSplitter:
    """Feeds on chunks of bytes, returns the complete lines so far."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._partial = bytearray()
        self._max_line_bytes = max_line_bytes

    def feed(self, data: bytes) -> list[str]:
        """The lines completed by ``data``, without their newline."""
        self._partial += data
        if b"\n" not in data:
            return self._overflow()
        *lines, rest = bytes(self._partial).split(b"\n")
        self._partial = bytearray(rest)
        return [_decode(line) for line in lines] + self._overflow()

    def flush(self) -> list[str]:
        """The last line, if the stream ended without a newline."""
        if not self._partial:
            return []
        line = _decode(bytes(self._partial))
        self._partial.clear()
        return [line]

    def _overflow(self) -> list[str]:
        pieces = []
        while len(self._partial) >= self._max_line_bytes:
            pieces.append(_decode(bytes(self._partial[: self._max_line_bytes])))
            del self._partial[: self._max_line_bytes]
        return pieces


def _decode(line: bytes) -> str:
    if line.endswith(b"\r"):
        line = line[:-1]
    return line.decode("utf-8", errors="replace")
