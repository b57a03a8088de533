"""A study on disk: its SQLite file and one directory per configuration.

Layout, under ``<runs-dir>/<study>/``::

    study.sqlite                  tables meta (key, value) and trials (one row per configuration)
    trials/<config_id>/fold-<k>.joblib  fold k's fitted estimator (one file per fold)
    trials/<config_id>/scores.json      the configuration's scores, written last
    trials/<config_id>/refit.joblib     its refit on the whole dataset, done ahead by a
                                  worker (``refitahead.py``), until moved to best_model.joblib
    best_model.joblib             the best configuration refit on the whole dataset
    last_run.json                 timings of the latest run

Only the session writes the SQLite file and ``scores.json`` (workers send
their folds' snapshots), so there is one writer and no locking to get wrong. A
configuration is known by its id (a hash of the model and parameters): the
primary key, so running it again replaces its row instead of adding one.
A ``scores.json`` whose row is missing (the session was killed before it
heard back) is adopted on the next run instead of training again.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from estimators import UsageError

DB_NAME = "study.sqlite"
BEST_MODEL = "best_model.joblib"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    config_id TEXT PRIMARY KEY,
    number INTEGER NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    mean_score REAL,
    std_score REAL,
    fold_scores TEXT,
    fit_seconds REAL,
    worker TEXT,
    snapshot TEXT,
    error TEXT,
    finished_at TEXT NOT NULL
);
"""
COLUMNS = (
    "config_id", "number", "params", "status", "mean_score", "std_score",
    "fold_scores", "fit_seconds", "worker", "snapshot", "error", "finished_at",
)  # fmt: skip


def now() -> str:
    """UTC now, ISO-8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def trial_dir(study_dir: Path, config_id: str) -> Path:
    """Where one configuration's snapshot and scores live."""
    return study_dir / "trials" / config_id


def refit_snapshot(study_dir: Path, config_id: str) -> Path:
    """Where a worker puts a configuration's refit on the whole dataset (then moved in place)."""
    return trial_dir(study_dir, config_id) / "refit.joblib"


def fold_snapshot(fold: int) -> str:
    """The file name of fold ``fold``'s snapshot in its configuration's directory."""
    return f"fold-{fold}.joblib"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: an interrupted run leaves no half file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Trial:
    """One row of the trials table, decoded."""

    config_id: str
    number: int
    params: dict[str, Any]
    status: str
    mean_score: float | None
    std_score: float | None
    fold_scores: list[float] | None
    fit_seconds: float | None
    worker: str | None
    snapshot: str | None
    error: str | None
    finished_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Trial:
        fields = dict(row)
        fields["params"] = json.loads(fields["params"])
        scores = fields["fold_scores"]
        fields["fold_scores"] = json.loads(scores) if scores is not None else None
        return cls(**fields)


class StudyStore:
    """The study's SQLite file (opened per operation: short, simple, safe)."""

    def __init__(self, study_dir: Path) -> None:
        self.dir = study_dir
        self.path = study_dir / DB_NAME

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=30)
        connection.row_factory = sqlite3.Row
        try:
            with connection:  # one transaction: committed, or rolled back on error
                yield connection
        finally:
            connection.close()

    def create(self) -> None:
        """Create the directory and tables if they do not exist yet."""
        (self.dir / "trials").mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)

    def check_protocol(self, protocol: dict[str, Any]) -> None:
        """Refuse to mix scores measured differently (model, folds, scoring) in one study."""
        if not self.path.exists():
            return
        with self._db() as db:
            db.executescript(SCHEMA)
            rows = dict(db.execute("SELECT key, value FROM meta").fetchall())
        for key, value in protocol.items():
            if key in rows and json.loads(rows[key]) != value:
                raise UsageError(
                    f"study {self.dir.name!r} was run with {key}={json.loads(rows[key])!r},"
                    f" not {value!r}: choose another --study (or --runs-dir)"
                )

    def save_meta(self, meta: dict[str, Any]) -> None:
        """Store (or update) key-value facts about the study."""
        with self._db() as db:
            db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [(key, json.dumps(value)) for key, value in meta.items()],
            )

    def meta(self) -> dict[str, Any]:
        """Every stored fact, decoded."""
        with self._db() as db:
            return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}

    def record(self, row: dict[str, Any]) -> None:
        """Insert or replace one configuration's row (never a duplicate)."""
        values = {column: row.get(column) for column in COLUMNS}
        values["params"] = json.dumps(row["params"], sort_keys=True)
        if row.get("fold_scores") is not None:
            values["fold_scores"] = json.dumps(row["fold_scores"])
        values["finished_at"] = row.get("finished_at") or now()
        marks = ", ".join("?" for _ in COLUMNS)
        with self._db() as db:
            db.execute(
                f"INSERT OR REPLACE INTO trials ({', '.join(COLUMNS)}) VALUES ({marks})",
                [values[column] for column in COLUMNS],
            )

    def trials(self, status: str | None = "done", limit: int = -1) -> list[Trial]:
        """Rows, best first: highest mean score, then lowest number (GridSearchCV's tie rule)."""
        where = "" if status is None else "WHERE status = ?"
        args: tuple[Any, ...] = () if status is None else (status,)
        with self._db() as db:
            rows = db.execute(
                f"SELECT * FROM trials {where}"
                " ORDER BY mean_score IS NULL, mean_score DESC, number, config_id LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [Trial.from_row(row) for row in rows]

    def done_ids(self) -> set[str]:
        """Ids of the configurations already done: a rerun skips them."""
        with self._db() as db:
            return {r[0] for r in db.execute("SELECT config_id FROM trials WHERE status='done'")}

    def adopt_orphans(self) -> int:
        """Record every ``scores.json`` on disk that has no 'done' row yet; returns how many."""
        done = self.done_ids()
        adopted = 0
        for scores in sorted(self.dir.glob("trials/*/scores.json")):
            if scores.parent.name in done:
                continue
            try:
                row = json.loads(scores.read_text())
            except (OSError, ValueError):
                continue  # unreadable: the configuration simply runs again
            if row.get("config_id") == scores.parent.name:
                self.record(row)
                adopted += 1
        return adopted
