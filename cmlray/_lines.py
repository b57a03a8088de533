"""Cutting a byte stream into whole lines of text, and progress bars into states.

A line is emitted only once its newline arrives (or at end of stream), so a
line is never split into fragments however the program's writes were
chunked. Invalid UTF-8 becomes replacement characters. A line longer than
``max_line_bytes`` without a newline is emitted in pieces of that size, so a
program that never writes a newline cannot grow memory without bound.

Carriage returns: progress bars (tqdm, pip, curl) redraw one line by writing
``\\r`` and the new state, with no newline until they finish. A terminal
shows only the latest state, so a line is reduced to its *last state*: the
text after its last ``\\r``, ignoring empty segments (so ``"text\\r"`` and
a CRLF ending keep ``"text"``). While such a line is still open, each read
that brings a ``\\r`` emits the open line's current state as a *progress
state*: the state followed by ``"\\r"`` (see :func:`is_progress`), a string
that no finished line ends with. Consumers show progress states as they
like (the relay thins them; the registry keeps them out of a worker's tail);
the finished line always follows, once its newline arrives. Only the open
line's current state is kept in memory, however long the bar runs.
"""

from __future__ import annotations

MAX_LINE_BYTES = 8 << 20
PROGRESS_MARK = "\r"


def is_progress(line: str) -> bool:
    """Whether ``line`` is a progress state (an open line's latest state), not a line."""
    return line.endswith(PROGRESS_MARK)


def last_state(line: str) -> str:
    """What a terminal ends up showing for ``line``: its last non-empty ``\\r`` segment.

    ``""`` if every segment is empty.
    """
    if "\r" not in line:
        return line
    end = len(line.rstrip("\r"))
    return line[line.rfind("\r", 0, end) + 1 : end]


class LineSplitter:
    """Feeds on chunks of bytes, returns the complete lines and progress states so far."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._partial = bytearray()
        self._max_line_bytes = max_line_bytes
        self._state = b""

    def feed(self, data: bytes) -> list[str]:
        """The lines completed by ``data`` (without newline), then maybe a progress state."""
        self._partial += data
        lines: list[str] = []
        if b"\n" in data:
            *complete, rest = bytes(self._partial).split(b"\n")
            self._partial = bytearray(rest)
            self._state = b""
            lines = [_decode(line) for line in complete]
        if b"\r" in data:
            lines += self._progress()
        return lines + self._overflow()

    def flush(self) -> list[str]:
        """The last line, if the stream ended without a newline (and it shows something)."""
        if not self._partial:
            return []
        start, end = _state_span(self._partial)
        text = _decode(bytes(self._partial[start:end]))
        self._partial.clear()
        self._state = b""
        return [text] if text else []

    def _progress(self) -> list[str]:
        """The open line's current state, if it changed; drops the states before it."""
        if b"\r" not in self._partial:
            return []
        start, end = _state_span(self._partial)
        if start > 0:
            del self._partial[: start - 1]  # keep the \r before the state
            start, end = 1, end - start + 1
        state = bytes(self._partial[start:end])
        if not state.strip() or state == self._state:
            return []
        self._state = state
        return [_decode(state) + PROGRESS_MARK]

    def _overflow(self) -> list[str]:
        pieces = []
        while len(self._partial) >= self._max_line_bytes:
            pieces.append(_decode(bytes(self._partial[: self._max_line_bytes])))
            del self._partial[: self._max_line_bytes]
            self._state = b""
        return pieces


def _state_span(line: bytes | bytearray) -> tuple[int, int]:
    """Where ``line``'s last non-empty ``\\r`` segment starts and ends.

    ``\\r`` is never part of a multi-byte UTF-8 sequence, so bytes can be cut
    on it before decoding.
    """
    end = len(line)
    while end and line[end - 1] == 0x0D:
        end -= 1
    return line.rfind(b"\r", 0, end) + 1, end


def _decode(line: bytes) -> str:
    if b"\r" in line:
        start, end = _state_span(line)
        line = line[start:end]
    return line.decode("utf-8", errors="replace")
