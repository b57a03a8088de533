"""Crawl the web politely with cmlray workers; with no seed URL, a demo site on 127.0.0.1.

    python examples/crawler/crawl.py [SEED_URL ...] --db crawl.db --workers 2 \
        --concurrency 16 --per-host 8 --delay 0.5 --max-pages 1000 --max-depth 10

See README.md in this folder. Run it again on the same ``--db`` to resume.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `crawler` is this folder as a package; drop the folder itself from the path so that
# its modules (config, parse, ...) cannot shadow top-level modules of other libraries.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from crawler.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
