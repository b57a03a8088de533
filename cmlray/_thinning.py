"""Thinning progress bars: which of a worker stream's progress states the relay shows.

:mod:`cmlray._lines` reduces a ``\\r``-line to its latest
state and sends an open line's states as *progress states*. The relay shows
at most one progress state per worker stream per ``progress_interval_s``
(default 1 s), in both modes; the newest state held back is shown when the
interval is over (a timer), unless its line finishes first. A finished line is
always shown at once, except when it is exactly the progress state already
on screen as that stream's latest output (so tqdm's final state is not
printed twice). Progress states are printed as ordinary lines rather than
redrawn in place: several workers and the user's own prints share the
console, and redrawing would need to take the console over (a Rich ``Live``
display), which clashes with the user's own live displays.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cmlray._lines import is_progress

PROGRESS_INTERVAL_S = 1.0

Key = tuple[str, str]
Schedule = Callable[[float, Callable[[], None]], object]


def daemon_timer(delay_s: float, callback: Callable[[], None]) -> threading.Timer:
    """Run ``callback`` once after ``delay_s`` on a daemon thread (never blocks exit).

    Errors writing to a console closed meanwhile (interpreter exit) are ignored.
    """

    def run() -> None:
        with contextlib.suppress(ValueError, OSError):
            callback()

    timer = threading.Timer(max(0.0, delay_s), run)
    timer.daemon = True
    timer.start()
    return timer


@dataclass
class _StreamProgress:
    """One worker stream's progress display state."""

    shown_at: float | None = None  # when a progress state was last shown
    on_screen: str | None = None  # the progress state shown last, if nothing followed it
    pending: str | None = None  # the newest state held back


class ProgressThinner:
    """Decides which lines and progress states of a batch to show (no I/O).

    Args:
        interval_s: the least time between two progress states of one stream.
        clock: monotonic seconds; injectable so tests need no sleeping.
    """

    def __init__(self, interval_s: float, clock: Callable[[], float]) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._streams: dict[Key, _StreamProgress] = {}

    def admit(self, key: Key, lines: Sequence[str]) -> list[str]:
        """The lines of ``key``'s batch to show now, progress states as plain text.

        A progress state that is not the batch's last one is already stale;
        the last one is shown or held back by the interval.
        """
        if not lines:
            return []
        state = self._streams.setdefault(key, _StreamProgress())
        finished = [line for line in lines if not is_progress(line)]
        shown = self._finished(state, finished) if finished else []
        if is_progress(lines[-1]):
            shown += self._progress(state, lines[-1][:-1])
        return shown

    def _finished(self, state: _StreamProgress, lines: list[str]) -> list[str]:
        """Finished lines: the first one ends the open progress line."""
        on_screen, state.on_screen, state.pending = state.on_screen, None, None
        if lines[0] == on_screen:
            return lines[1:]
        return lines

    def _progress(self, state: _StreamProgress, text: str) -> list[str]:
        now = self._clock()
        if state.shown_at is not None and now - state.shown_at < self._interval_s:
            state.pending = text
            return []
        state.shown_at, state.on_screen, state.pending = now, text, None
        return [text]

    def next_due(self) -> float | None:
        """Seconds until the earliest held-back state may be shown; None if none is."""
        waits = [
            state.shown_at + self._interval_s - self._clock()
            for state in self._streams.values()
            if state.pending is not None and state.shown_at is not None
        ]
        return max(0.0, min(waits)) if waits else None

    def release_due(self) -> list[tuple[Key, str]]:
        """The held-back states whose interval is over, now counted as shown."""
        released: list[tuple[Key, str]] = []
        for key, state in self._streams.items():
            if state.pending is not None:
                released += [(key, text) for text in self._progress(state, state.pending)]
        return released
