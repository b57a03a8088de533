"""A session console captured in memory, for tests that read what workers printed."""

from __future__ import annotations

import io

from rich.console import Console


class Captured:
    """The session's console output, captured in memory."""

    def __init__(self) -> None:
        self.file = io.StringIO()
        self.console = Console(file=self.file, force_terminal=False, width=200)

    def text(self) -> str:
        return self.file.getvalue()
