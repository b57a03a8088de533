"""Micro-benchmark of the output path: LineSplitter and Relay, no Ray.

Feeds 4 workers x 50,000 lines (interleaved batches, as the event pump
delivers them) through ``LineSplitter.feed`` and ``Relay.lines``, for a plain
console and a terminal console, writing to an in-memory file; plain lines,
then lines with SGR colours. Prints lines/s.
Run: ``python benchmarks/relay_formatting.py``.
"""

from __future__ import annotations

import io
import time

from rich.console import Console

from cmlray._lines import LineSplitter
from cmlray._relay import Relay

WORKERS = 4
LINES = 50_000
CHUNK = 1 << 16


def _chunks(worker: int, coloured: bool = False) -> list[bytes]:
    text = "\x1b[32mINFO\x1b[0m line {} of worker {}\n" if coloured else "line {} of worker {}\n"
    data = "".join(text.format(i, worker) for i in range(LINES)).encode()
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


def _batches(coloured: bool) -> list[tuple[str, list[str]]]:
    per_worker = []
    for worker in range(WORKERS):
        splitter = LineSplitter()
        chunks = _chunks(worker, coloured)
        per_worker.append([(f"worker-{worker}", splitter.feed(c)) for c in chunks])
    return [batch for group in zip(*per_worker, strict=False) for batch in group]


def bench_splitter() -> float:
    chunks = [_chunks(w) for w in range(WORKERS)]
    start = time.perf_counter()
    for worker_chunks in chunks:
        splitter = LineSplitter()
        for chunk in worker_chunks:
            splitter.feed(chunk)
    return WORKERS * LINES / (time.perf_counter() - start)


def bench_relay(terminal: bool, coloured: bool = False) -> float:
    batches = _batches(coloured)
    console = Console(file=io.StringIO(), force_terminal=terminal, width=120,
                      color_system="truecolor" if terminal else None)  # fmt: skip
    relay = Relay(console)
    start = time.perf_counter()
    for name, lines in batches:
        relay.lines(name, "out", lines)
    elapsed = time.perf_counter() - start
    assert console.file.getvalue().count("\n") == WORKERS * LINES  # type: ignore[attr-defined]
    return WORKERS * LINES / elapsed


def main() -> None:
    print(f"splitter:                 {bench_splitter():>12,.0f} lines/s")
    for _ in range(3):
        print(f"relay, plain:             {bench_relay(False):>12,.0f} lines/s")
        print(f"relay, terminal:          {bench_relay(True):>12,.0f} lines/s")
        print(f"relay, plain, coloured:   {bench_relay(False, True):>12,.0f} lines/s")
        print(f"relay, terminal, coloured:{bench_relay(True, True):>12,.0f} lines/s")


if __name__ == "__main__":
    main()
