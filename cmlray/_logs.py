"""Every worker's full output, for ``cmlray.logs`` and ``init(log_dir=...)``.

The console shows lines as they come and a worker's ``tail`` keeps the last
100; this store keeps everything, stdout and stderr interleaved as they
arrived (as a terminal would show them, ``2>&1``), progress-bar states left
out, and which stream each run of lines came from (so ``stream="err"`` can
be read back alone).

- With ``log_dir``: a file per worker, ``<log_dir>/<name>-<id>.log``,
  written as lines arrive and kept after the session.
- Without: in memory, bounded: a worker's output moves to a file of its own
  in a private temp dir (the session's, swept by its reaper on any exit)
  once it passes ``spill_bytes``, or once all workers' output in memory
  passes ``budget_bytes``. The dir is removed when the session ends.

Files are closed when their worker ends, so a long session holds no file
open per finished worker.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO

from cmlray._lines import is_progress

SPILL_BYTES = 1 << 20
BUDGET_BYTES = 64 << 20
STREAMS = ("all", "out", "err")


@dataclass
class _Log:
    """One worker's output: bytes in memory or in a file, and its stream runs."""

    name: str
    memory: bytearray | None = field(default_factory=bytearray)
    path: str | None = None
    file: IO[bytes] | None = None
    # Run lengths in bytes, in order: > 0 stdout, < 0 stderr (8 bytes a run).
    runs: array[int] = field(default_factory=lambda: array("q"))

    def add_run(self, stream: str, size: int) -> None:
        signed = -size if stream == "err" else size
        if self.runs and (self.runs[-1] < 0) == (signed < 0):
            self.runs[-1] += signed
        else:
            self.runs.append(signed)


class WorkerLogs:
    """Keeps each worker's whole output (see the module docstring).

    Args:
        directory: ``log_dir``: keep a file per worker there; None: in memory,
            spilling to a private temp dir.
        spill_root: where that temp dir is made (default: the system's).
        spill_bytes: a worker's output kept in memory at most.
        budget_bytes: all workers' output kept in memory at most.
    """

    def __init__(
        self,
        directory: str | None = None,
        *,
        spill_root: str | None = None,
        spill_bytes: int = SPILL_BYTES,
        budget_bytes: int = BUDGET_BYTES,
    ) -> None:
        if directory is not None:
            os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self._spill_root = spill_root
        self._spill_dir: str | None = None
        self._spill_bytes = spill_bytes
        self._budget_bytes = budget_bytes
        self._in_memory_bytes = 0
        self._logs: dict[str, _Log] = {}
        self._lock = threading.Lock()

    def path(self, worker_id: str, name: str) -> str:
        """The ``log_dir`` file of a worker (only meaningful with a ``directory``)."""
        return os.path.join(self.directory or "", f"{name}-{worker_id}.log")

    def write(self, worker_id: str, name: str, lines: Sequence[str], stream: str = "out") -> None:
        """Append a batch of one worker's lines from ``stream`` ("out" or "err")."""
        if not lines:
            return
        text = "\n".join(lines) + "\n"
        if "\r" in text:  # rare: progress states are not lines (the fast path is 4x faster)
            text = "".join(f"{line}\n" for line in lines if not is_progress(line))
            if not text:
                return
        data = text.encode()
        with self._lock:
            log = self._logs.get(worker_id)
            if log is None:
                log = self._logs[worker_id] = _Log(name)
                if self.directory is not None:
                    self._to_file(log, self.path(worker_id, name))
            log.add_run(stream, len(data))
            if log.memory is not None:
                log.memory += data
                self._in_memory_bytes += len(data)
                over_budget = self._in_memory_bytes > self._budget_bytes
                if len(log.memory) > self._spill_bytes or over_budget:
                    self._spill(worker_id, log)
            else:
                if log.file is None:  # written after its end: reopen
                    log.file = open(log.path or "", "ab")  # noqa: SIM115
                log.file.write(data)
                if self.directory is not None:  # a user's file: readable as it grows
                    log.file.flush()

    def _to_file(self, log: _Log, path: str) -> None:
        log.path = path
        log.file = open(path, "ab")  # noqa: SIM115 - closed in close()
        if log.memory is not None:
            log.file.write(log.memory)
            self._in_memory_bytes -= len(log.memory)
            log.memory = None

    def _spill(self, worker_id: str, log: _Log) -> None:
        if self._spill_dir is None:
            self._spill_dir = tempfile.mkdtemp(prefix="cmlray-logs-", dir=self._spill_root)
        self._to_file(log, os.path.join(self._spill_dir, f"{worker_id}.log"))

    def read(self, worker_id: str, stream: str = "all", tail: int | None = None) -> str:
        """A worker's output so far: every line of ``stream``, or the last ``tail`` lines.

        A worker that printed nothing (or is unknown here) gives "".
        """
        with self._lock:
            log = self._logs.get(worker_id)
            if log is None:
                return ""
            if log.file is not None:
                log.file.flush()
            data = bytes(log.memory) if log.memory is not None else _read_file(log.path)
            runs = log.runs.tolist()
        if stream != "all":
            data = _select(data, runs, stream == "err")
        text = data.decode(errors="replace")
        if tail is None:
            return text
        lines = text.splitlines(keepends=True)
        return "".join(lines[len(lines) - tail :]) if tail else ""

    def close(self, worker_id: str) -> None:
        """The worker ended: close its file (its output stays readable)."""
        with self._lock:
            log = self._logs.get(worker_id)
            file = log.file if log is not None else None
            if log is not None:
                log.file = None
        if file is not None:
            file.close()

    def close_all(self) -> None:
        """The session ends: close every file, remove the temp dir, forget the output."""
        for worker_id in list(self._logs):
            self.close(worker_id)
        with self._lock:
            self._logs.clear()
            self._in_memory_bytes = 0
            spill_dir, self._spill_dir = self._spill_dir, None
        if spill_dir is not None:
            shutil.rmtree(spill_dir, ignore_errors=True)


def _read_file(path: str | None) -> bytes:
    if path is None:
        return b""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:  # a log_dir file the user removed
        return b""


def _select(data: bytes, runs: list[int], err: bool) -> bytes:
    """The bytes of ``data`` in the runs of one stream (stderr if ``err``)."""
    parts = []
    offset = 0
    for run in runs:
        size = abs(run)
        if (run < 0) == err:
            parts.append(data[offset : offset + size])
        offset += size
    return b"".join(parts)
