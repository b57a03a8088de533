"""The console relay: workers' lines, prefixed and coloured, in the session.

Each line a worker prints is shown as ``name | text`` with the worker's own
colour on a terminal (stderr marked in red), and as plain ``[name] text`` /
``[name:err] text`` elsewhere (files, pipes, CI logs). A worker's text is
shown literally: Rich markup in it is not interpreted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.text import Text

PALETTE = (
    "cyan",
    "magenta",
    "green",
    "yellow",
    "blue",
    "bright_red",
    "bright_cyan",
    "bright_magenta",
    "bright_green",
    "bright_yellow",
    "bright_blue",
    "orange1",
)


class Relay:
    """Prints workers' output lines to a Rich console.

    Args:
        console: where lines go; defaults to Rich's global console, so a test
            can pass ``Console(file=io.StringIO(), ...)`` to capture them.
    """

    def __init__(self, console: Console | None = None) -> None:
        self._console = console
        self._lock = threading.Lock()
        self._colours: dict[str, str] = {}

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich import get_console

            return get_console()
        return self._console

    def colour(self, name: str) -> str:
        """A stable colour per worker name, in the order workers appear."""
        with self._lock:
            if name not in self._colours:
                self._colours[name] = PALETTE[len(self._colours) % len(PALETTE)]
            return self._colours[name]

    def lines(self, name: str, stream: str, lines: Sequence[str]) -> None:
        """Show a batch of one worker's lines from ``stream`` ("out" or "err")."""
        console = self.console
        if console.is_terminal or console.is_jupyter:
            console.print(self._styled(name, stream, lines), soft_wrap=True)
        else:
            tag = f"[{name}:err]" if stream == "err" else f"[{name}]"
            text = "".join(f"{tag} {line}\n" for line in lines)
            with self._lock:
                console.file.write(text)
                console.file.flush()

    def _styled(self, name: str, stream: str, lines: Iterable[str]) -> Text:
        colour = self.colour(name)
        prefix = Text(name, style=f"bold {colour}")
        prefix.append(
            " ! " if stream == "err" else " | ", style="red" if stream == "err" else colour
        )
        out = Text()
        for line in lines:
            out.append_text(prefix)
            out.append(line, style="red" if stream == "err" else "")
            out.append("\n")
        out.rstrip()
        return out

    def notice(self, message: str) -> None:
        """A line from cmlray itself (a worker started, failed, ...)."""
        console = self.console
        if console.is_terminal or console.is_jupyter:
            console.print(Text(message, style="dim"), soft_wrap=True)
        else:
            with self._lock:
                console.file.write(f"[cmlray] {message}\n")
                console.file.flush()
