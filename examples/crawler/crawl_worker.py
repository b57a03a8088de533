"""The program each crawler worker runs (``launch_workers(script=...)``).

It reads the queue's name and the fetch settings from its environment
(``CRAWLER_QUEUE``, ``CRAWLER_FETCH``), then serves the queue: each item is
a batch of URLs, fetched concurrently; each result the batch's records.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # `crawler` imports; no shadowing

from crawler.config import FETCH_ENV, QUEUE_ENV, FetchConfig  # noqa: E402
from crawler.fetcher import run_worker  # noqa: E402


def main() -> None:
    """Serve the queue named in the environment with the settings given there."""
    config = FetchConfig(**json.loads(os.environ[FETCH_ENV]))
    run_worker(os.environ[QUEUE_ENV], config)


if __name__ == "__main__":
    main()
