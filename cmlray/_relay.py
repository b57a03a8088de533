"""The console relay: workers' lines, prefixed and coloured, in the session.

Two modes, chosen per batch from the console:

- *Styled* (a terminal, or Jupyter): ``[name] text``, the name in a colour of
  its own, stderr as ``[name:err]`` with ``:err`` in bold red. The worker's
  own colours (SGR) survive; every other escape sequence and control
  character is removed (:mod:`cmlray._sanitize`). A batch is one ``print``
  of one renderable that yields Rich segments directly (Rich's ``Text``
  splits and re-renders every line, measured about 6 times slower). A
  worker's colours are decoded line by line, so they never leak into the
  next line or into the prefix.
- *Plain* (files, pipes, CI logs): exactly ``[name] text`` or
  ``[name:err] text`` per line, every escape sequence removed, colours too.
  A batch is one string and one ``write``, with no Rich rendering: this
  path handles millions of lines per second (``benchmarks/bench_relay.py``).

Either way the text is shown literally: it is never parsed as Rich markup.

Progress bars are thinned to about one state a second per worker stream
(``_thinning.py``).

Jupyter: Rich shows output there as display data, which ipykernel (7 and
later) files under the cell whose context the ``print`` runs in; a thread of
its own falls back to the cell running at that moment. The event pump
handles each worker's batches in the context of the ``launch_workers`` call,
so lines land in the cell that launched the worker. The progress timer runs
on a thread of its own, so a held-back progress state is shown in the
context its batch came with (kept per worker stream), not the timer's.
"""

from __future__ import annotations

import contextvars
import functools
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from rich.ansi import AnsiDecoder
from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from cmlray._lines import is_progress, last_state
from cmlray._sanitize import is_clean, keep_colours, strip_escapes
from cmlray._thinning import PROGRESS_INTERVAL_S, Key, ProgressThinner, Schedule, daemon_timer

# Colours for 256-colour and truecolor consoles: cube colours, so a terminal
# theme does not remap them; hues spread so the first eight stay apart; no
# red (stderr's mark).
PALETTE = (
    "color(33)",
    "color(178)",
    "color(170)",
    "color(41)",
    "color(37)",
    "color(208)",
    "color(99)",
    "color(112)",
    "color(205)",
    "color(75)",
    "color(130)",
    "color(144)",
)
# For 16-colour consoles, where the cube colours above would collapse.
PALETTE_16 = (
    "blue",
    "yellow",
    "magenta",
    "green",
    "cyan",
    "bright_blue",
    "bright_yellow",
    "bright_magenta",
    "bright_green",
    "bright_cyan",
)
ERR_STYLE = "bold red"
_SGR = re.compile(r"\x1b\[([0-9;:]*)m")


class Relay:
    """Prints workers' output lines to a Rich console.

    Args:
        console: where lines go; defaults to Rich's global console (looked up
            at each write), so a test can pass ``Console(file=io.StringIO())``.
        progress_interval_s: the least time between two progress states shown
            for one worker stream.
        clock: monotonic seconds, for the progress interval (tests inject one).
        schedule: ``schedule(delay_s, callback)`` runs ``callback`` later; shows
            held-back progress states (tests inject one and call it themselves).
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        progress_interval_s: float = PROGRESS_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule = daemon_timer,
    ) -> None:
        self._console = console
        self._lock = threading.RLock()
        self._colours: dict[str, int] = {}
        self._tags: dict[Key, str] = {}
        self._prefixes: dict[Key, list[Segment]] = {}
        self._thinner = ProgressThinner(progress_interval_s, clock)
        self._schedule = schedule
        self._timer_armed = False
        self._contexts: dict[Key, contextvars.Context] = {}

    @property
    def console(self) -> Console:
        """The console lines go to."""
        if self._console is None:
            from rich import get_console

            return get_console()
        return self._console

    def colour(self, name: str) -> str:
        """The worker's colour on this console: stable, assigned in order of appearance.

        Calling it when a worker is launched fixes colours in launch order.
        """
        with self._lock:
            index = self._colours.setdefault(name, len(self._colours))
        palette = PALETTE_16 if self.console.color_system == "standard" else PALETTE
        return palette[index % len(palette)]

    def lines(self, name: str, stream: str, lines: Sequence[str]) -> None:
        """Show a batch of one worker's lines from ``stream`` ("out" or "err").

        ``lines`` carry no newline; progress states (see :mod:`cmlray._lines`)
        are thinned.
        """
        with self._lock:
            shown = self._thinner.admit((name, stream), lines)
            if shown:
                self._show(name, stream, shown)
            if lines and is_progress(lines[-1]):  # it may be held back: keep where it belongs
                self._contexts[(name, stream)] = contextvars.copy_context()
            self._arm_timer()

    def notice(self, message: str) -> None:
        """A line from cmlray itself (a worker started, failed, ...)."""
        message = strip_escapes(message)
        with self._lock:
            console = self.console
            if _styled(console):
                console.print(Text(message, style="dim"), soft_wrap=True)
            else:
                _write(console, f"[cmlray] {message}\n")

    def _arm_timer(self) -> None:
        """Make sure a timer will show the held-back progress states when due."""
        if self._timer_armed:
            return
        delay = self._thinner.next_due()
        if delay is not None:
            self._timer_armed = True
            self._schedule(delay, self._on_timer)

    def _on_timer(self) -> None:
        with self._lock:
            self._timer_armed = False
            for key, text in self._thinner.release_due():
                self._show_in_context(key, text)
            self._arm_timer()

    def _show_in_context(self, key: Key, text: str) -> None:
        """Show a held-back progress state in the context its batch came in.

        In Jupyter that context names the cell the worker was launched from.
        """
        context = self._contexts.get(key)
        if context is None:
            self._show(*key, [text])
        else:
            context.copy().run(self._show, *key, [text])

    def _show(self, name: str, stream: str, lines: Sequence[str]) -> None:
        console = self.console
        if _styled(console):
            console.print(_StyledBatch(self._prefix(name, stream), lines), soft_wrap=True)
        else:
            _write(console, _plain_batch(self._tag(name, stream), lines))

    def _tag(self, name: str, stream: str) -> str:
        """``[name] `` or ``[name:err] `` for plain output (cached)."""
        tag = self._tags.get((name, stream))
        if tag is None:
            shown = strip_escapes(name)
            tag = f"[{shown}:err] " if stream == "err" else f"[{shown}] "
            self._tags[(name, stream)] = tag
        return tag

    def _prefix(self, name: str, stream: str) -> list[Segment]:
        """The styled prefix: ``[name]`` in the worker's colour, ``:err`` in red (cached)."""
        prefix = self._prefixes.get((name, stream))
        if prefix is None:
            style = Style.parse(f"bold {self.colour(name)}")
            prefix = _styled_prefix(strip_escapes(name), stream, style)
            self._prefixes[(name, stream)] = prefix
        return prefix


def _styled(console: Console) -> bool:
    """Whether the console shows styles: a terminal, or Jupyter."""
    return console.is_terminal or console.is_jupyter


def _write(console: Console, text: str) -> None:
    """One write and flush to the console's file, bypassing Rich's rendering."""
    file = console.file
    file.write(text)
    file.flush()


def _styled_prefix(name: str, stream: str, style: Style) -> list[Segment]:
    if stream == "err":
        return [
            Segment("[" + name, style),
            Segment(":err", Style.parse(ERR_STYLE)),
            Segment("]", style),
            Segment(" "),
        ]
    return [Segment(f"[{name}]", style), Segment(" ")]


def _plain_batch(tag: str, lines: Sequence[str]) -> str:
    """``tag`` + line + newline for each line, escapes removed, as one string."""
    text = tag + ("\n" + tag).join(lines) + "\n"
    if is_clean(text):
        return text
    return tag + ("\n" + tag).join([strip_escapes(last_state(line)) for line in lines]) + "\n"


class _StyledBatch:
    """A batch of one worker stream's lines, rendered straight to Rich segments.

    Each line becomes the prefix, the line shown literally and a newline: no
    markup parsing, no wrapping (the terminal wraps long lines itself), none
    of ``Text``'s per-line splitting, which measured several times slower. A
    line's own SGR colours become styles of that line only.
    """

    def __init__(self, prefix: Sequence[Segment], lines: Sequence[str]) -> None:
        self._prefix = prefix
        self._lines = lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        newline = Segment.line()
        for line in self._lines:
            yield from self._prefix
            if is_clean(line):
                yield Segment(line)
            else:
                yield from _coloured(keep_colours(last_state(line)))
            yield newline


def _coloured(line: str) -> Iterator[Segment]:
    """Segments for a line whose only escapes are SGR; its styles start afresh."""
    style = Style.null()
    for index, part in enumerate(_SGR.split(line)):
        if index % 2:
            style = _after_sgr(style, part)
        elif part:
            yield Segment(part, style or None)


@functools.lru_cache(maxsize=1024)
def _after_sgr(style: Style, params: str) -> Style:
    """The style after SGR ``params`` applied to ``style``, as Rich's AnsiDecoder reads it.

    Cached: a program uses few distinct colour changes, and decoding each
    line afresh with ``Text.from_ansi`` measured about 20 times slower.
    """
    decoder = AnsiDecoder()
    decoder.style = style
    decoder.decode_line(f"\x1b[{params}m")
    return decoder.style
