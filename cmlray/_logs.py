"""Every worker's full output, kept in a file per worker (``init(log_dir=...)``).

The console shows lines as they come and a worker's ``tail`` keeps the last
100; the log file keeps everything, stdout and stderr interleaved as they
arrived (as a terminal would show them, ``2>&1``), progress-bar states left
out. Files are named ``<name>-<id>.log`` and closed when the worker ends, so
a long session holds no file open per finished worker.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import IO

from cmlray._lines import is_progress


class WorkerLogs:
    """Appends workers' lines to one file per worker under ``directory``."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self._files: dict[str, IO[str]] = {}
        self._lock = threading.Lock()

    def path(self, worker_id: str, name: str) -> str:
        return os.path.join(self.directory, f"{name}-{worker_id}.log")

    def write(self, worker_id: str, name: str, lines: Sequence[str]) -> None:
        text = "".join(f"{line}\n" for line in lines if not is_progress(line))
        if not text:
            return
        with self._lock:
            file = self._files.get(worker_id)
            if file is None:
                file = open(self.path(worker_id, name), "a", encoding="utf-8")  # noqa: SIM115
                self._files[worker_id] = file
            file.write(text)
            file.flush()

    def close(self, worker_id: str) -> None:
        with self._lock:
            file = self._files.pop(worker_id, None)
        if file is not None:
            file.close()

    def close_all(self) -> None:
        for worker_id in list(self._files):
            self.close(worker_id)
