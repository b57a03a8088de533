"""Ray warnings that say nothing to a cmlray user, filtered out of its logs.

Each is about something cmlray does on purpose and documents itself.
"""

from __future__ import annotations

import logging


class _Without(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


_installed: set[tuple[str, str]] = set()


def hush(logger_name: str, fragment: str) -> None:
    """Drop records of ``logger_name`` whose message contains ``fragment`` (once)."""
    if (logger_name, fragment) not in _installed:
        _installed.add((logger_name, fragment))
        logging.getLogger(logger_name).addFilter(_Without(fragment))
