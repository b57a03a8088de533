"""What a worker sends back for each URL: a plain dict (the wire format).

Plain dicts travel through the queue without the session and the workers
having to agree on a class's import path.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

Record = dict[str, Any]


def now_iso() -> str:
    """The current UTC time, ISO-8601 with milliseconds and ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def failure(url: str, error: str, retryable: bool) -> Record:
    """The record of a fetch that got no HTTP response (or no usable one).

    Args:
        url: the URL asked for.
        error: what happened, in words.
        retryable: True for timeouts and connection errors (tried again
            after a backoff), False when trying again cannot help.
    """
    return {
        "url": url,
        "final_url": url,
        "status": None,
        "title": None,
        "content_type": None,
        "size": None,
        "content_hash": None,
        "fetched_at": now_iso(),
        "elapsed_ms": None,
        "error": error,
        "retryable": retryable,
        "links": [],
        "location": None,
    }
