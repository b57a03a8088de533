"""The crawl's SQLite database: pages, the link graph, the frontier, robots.txt.

The session is the single writer. Everything one queue result changes (its
pages, their links, the URLs they add to the frontier, the frontier rows they
retire) is written in one transaction, so a crawl killed at any moment
leaves a database that says exactly which pages are stored and which URLs
are still to fetch: the next run resumes from it, fetches no stored page
again and writes no duplicate row (every table has a primary key).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS pages (
    url TEXT PRIMARY KEY,
    final_url TEXT,
    status INTEGER,
    title TEXT,
    content_type TEXT,
    size INTEGER,
    content_hash TEXT,
    fetched_at TEXT,
    depth INTEGER,
    attempts INTEGER,
    elapsed_ms REAL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS links (
    src TEXT NOT NULL,
    dst TEXT NOT NULL,
    PRIMARY KEY (src, dst)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS frontier (
    url TEXT PRIMARY KEY,
    depth INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    hops INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS skipped (
    url TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    depth INTEGER
);
CREATE TABLE IF NOT EXISTS robots (
    host TEXT PRIMARY KEY,
    status INTEGER,
    body TEXT NOT NULL,
    fetched_at TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT
);
"""

PAGE_COLUMNS = (
    "url",
    "final_url",
    "status",
    "title",
    "content_type",
    "size",
    "content_hash",
    "fetched_at",
    "depth",
    "attempts",
    "elapsed_ms",
    "error",
)
_INSERT_PAGE = (
    f"INSERT INTO pages ({', '.join(PAGE_COLUMNS)}) VALUES ({', '.join('?' * len(PAGE_COLUMNS))})"
    " ON CONFLICT(url) DO NOTHING"
)


def connect(path: str) -> sqlite3.Connection:
    """Open (and create) a crawl database: WAL journal, the schema in place."""
    db = sqlite3.connect(path, isolation_level=None)  # transactions are explicit
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash loses no committed batch
    db.executescript(SCHEMA)
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One atomic batch of writes: all of them or none."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@dataclass(frozen=True)
class FrontierRow:
    """A URL to fetch, as the frontier table holds it."""

    url: str
    depth: int
    attempts: int = 0
    hops: int = 0


@dataclass
class Writes:
    """Everything one queue result changes, to be written in one transaction."""

    pages: list[Mapping[str, Any]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)
    frontier: list[FrontierRow] = field(default_factory=list)
    retries: list[FrontierRow] = field(default_factory=list)
    skipped: list[tuple[str, str, int]] = field(default_factory=list)
    robots: list[tuple[str, int | None, str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Resumed:
    """What an existing database says about a crawl."""

    seen: set[str]
    frontier: list[FrontierRow]
    robots: dict[str, tuple[int | None, str]]
    pages: int


class Store:
    """The session's single connection to the crawl database."""

    def __init__(self, path: str) -> None:
        self.db = connect(path)

    def close(self) -> None:
        self.db.close()

    def load(self) -> Resumed:
        """The stored crawl: URLs already decided, the frontier, robots.txt files."""
        seen = {
            row[0] for row in self.db.execute("SELECT url FROM pages UNION SELECT url FROM skipped")
        }
        frontier = [
            FrontierRow(*row)
            for row in self.db.execute(
                "SELECT url, depth, attempts, hops FROM frontier ORDER BY rowid"
            )
            if row[0] not in seen
        ]
        seen.update(row.url for row in frontier)
        robots = {h: (s, b) for h, s, b in self.db.execute("SELECT host, status, body FROM robots")}
        return Resumed(seen, frontier, robots, self.count("pages"))

    def count(self, table: str) -> int:
        return int(self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def write(self, writes: Writes) -> None:
        """Apply one result's writes atomically."""
        with transaction(self.db) as db:
            db.executemany(_INSERT_PAGE, [tuple(p[c] for c in PAGE_COLUMNS) for p in writes.pages])
            db.executemany(
                "DELETE FROM frontier WHERE url = ?", [(p["url"],) for p in writes.pages]
            )
            db.executemany("INSERT OR IGNORE INTO links VALUES (?, ?)", writes.links)
            db.executemany(
                "INSERT OR IGNORE INTO frontier VALUES (?, ?, ?, ?)",
                [(r.url, r.depth, r.attempts, r.hops) for r in writes.frontier],
            )
            db.executemany(
                "UPDATE frontier SET attempts = ? WHERE url = ?",
                [(r.attempts, r.url) for r in writes.retries],
            )
            db.executemany("INSERT OR IGNORE INTO skipped VALUES (?, ?, ?)", writes.skipped)
            db.executemany("INSERT OR REPLACE INTO robots VALUES (?, ?, ?, ?)", writes.robots)

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with transaction(self.db) as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
