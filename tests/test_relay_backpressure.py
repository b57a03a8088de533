"""Output relay back-pressure and long lines.

The session here has a slow console: its file's ``write`` sleeps. A worker
that prints far faster than that console can show must be slowed down (its
writes block on its pipe) while the session's memory stays bounded: between
the program's pipe and the console there are only the agent's event socket
(its write buffer of 2 MB and the kernel's, ``cmlray/_eventsocket.py``; on
another node Ray's streaming-generator window,
``_generator_backpressure_num_objects`` batches of at most about 1 MB) and
one batch being shown. Also: one 1 MB line without a newline
arrives whole, as one line, when its worker exits.

The console file keeps only counts for the flood (keeping its text would grow
this very process, whose memory is measured).
"""

from __future__ import annotations

import contextlib
import gc
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from rich.console import Console

import cmlray as cdsw

pytestmark = pytest.mark.slow

MB = 1 << 20
FLOOD_LINES = 1_000_000  # 1,001 bytes each: about 1 GB, if nothing held the worker back
FLOOD_LINE_BYTES = 1001
CHUNK_LINES = 1000  # the flood writes 1,000 lines (1 MB) per write
SLOW_WRITE_S = 0.25  # the slow console: at most about 4 MB/s
WINDOW_S = 10.0  # how long the flood is watched
RSS_GROWTH_LIMIT = 300 * MB
IN_FLIGHT_LIMIT = 100 * MB  # Ray's window: 32 batches of about 1 MB, plus the pipe
BIG_LINE = "BEGIN" + "L" * (MB - 8) + "END"

FLOOD_CODE = f"""
import os, sys
progress = os.open(os.environ["FLOOD_PROGRESS"], os.O_WRONLY | os.O_CREAT, 0o600)
out = sys.stdout.buffer
body = b"f" * {FLOOD_LINE_BYTES - 11} + b"\\n"
for chunk in range({FLOOD_LINES // CHUNK_LINES}):
    base = chunk * {CHUNK_LINES}
    out.write(b"".join(b"%09d " % (base + j) + body for j in range({CHUNK_LINES})))
    out.flush()
    os.pwrite(progress, b"%020d" % (base + {CHUNK_LINES}), 0)
"""
BIG_CODE = f"import sys; sys.stdout.write('BEGIN' + 'L' * {MB - 8} + 'END')"
LINE = re.compile(r"\[(?P<name>[^\]:]+)(?P<err>:err)?\] (?P<text>.*)")
FLOOD_TEXT = re.compile(rf"(?P<index>\d{{9}}) f{{{FLOOD_LINE_BYTES - 11}}}")


@dataclass
class SlowFile:
    """A console file that sleeps ``delay_s`` per write and keeps counts, not text.

    Lines of the workers named in ``keep`` are kept whole; the flood's lines
    are checked for format and order as they pass, then dropped.
    """

    keep: set[str]
    delay_s: float = 0.0
    flood_next: int = 0  # the flood line expected next: flood lines shown so far
    bad_flood_lines: list[tuple[int, str]] = field(default_factory=list)  # (position, text)
    kept: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, text: str) -> int:
        time.sleep(self.delay_s)
        with self.lock:
            for line in text.splitlines():
                self._record(line)
        return len(text)

    def _record(self, line: str) -> None:
        match = LINE.fullmatch(line)
        if match is None or match["name"] in self.keep:
            self.kept[match["name"] if match else "?"].append(line)
        elif match["name"] == "flood":
            flood = FLOOD_TEXT.fullmatch(match["text"])
            if flood is None or int(flood["index"]) != self.flood_next:
                self.bad_flood_lines.append((self.flood_next, match["text"]))
            self.flood_next += 1

    def flush(self) -> None:
        """Nothing is buffered."""

    def isatty(self) -> bool:
        return False


@pytest.fixture(scope="module")
def slow(no_leaks: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowFile]:
    """A session of its own whose console writes to a :class:`SlowFile`."""
    file = SlowFile(keep={"big", "warm"})
    console = Console(file=file, force_terminal=False, width=200)  # type: ignore[arg-type]
    project = tmp_path_factory.mktemp("project")
    cdsw.init(num_cpus=4, project_dir=str(project), console=console)
    try:
        yield file
    finally:
        file.delay_s = 0.0
        cdsw.shutdown()


def test_a_1mb_line_without_newline_arrives_whole(slow: SlowFile) -> None:
    workers = cdsw.launch_workers(1, cpu=0.5, memory=0.2, code=BIG_CODE, name="big")
    result = cdsw.await_workers(workers, timeout_seconds=60)
    assert not result["failures"], result["failures"]
    assert slow.kept["big"] == [f"[big] {BIG_LINE}"]


@dataclass
class Sample:
    """One look at the session while the flood runs."""

    rss: int
    written_lines: int  # what the flood has written (its own count)
    shown_lines: int  # what the console has shown of it

    @property
    def in_flight(self) -> int:
        """Bytes written by the worker, not yet shown: held in the pipe, actor or Ray."""
        return (self.written_lines - self.shown_lines) * FLOOD_LINE_BYTES


def written_lines(progress: Path) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(progress.read_bytes() or 0)
    return 0


def watch(slow: SlowFile, progress: Path, seconds: float) -> list[Sample]:
    """Samples of RSS, the flood's progress and the console's, every 0.2 s."""
    me = psutil.Process()
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)
        shown = slow.flood_next
        samples.append(Sample(int(me.memory_info().rss), written_lines(progress), shown))
    return samples


def warm_up() -> int:
    """Run a worker once so the session's lazy imports are done; the RSS then."""
    workers = cdsw.launch_workers(1, cpu=0.5, memory=0.2, code="print('warm')", name="warm")
    assert not cdsw.await_workers(workers, timeout_seconds=60)["failures"]
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def assert_flood_lines_whole_and_in_order(slow: SlowFile) -> None:
    """Every flood line shown was whole and in order, but maybe the last.

    The flood is stopped by a signal, maybe in the middle of a write: the
    part of its last line that was written is shown as its last line.
    """
    bad = slow.bad_flood_lines
    if len(bad) == 1 and bad[0][0] == slow.flood_next - 1:
        position, text = bad[0]
        expected = f"{position:09d} " + "f" * (FLOOD_LINE_BYTES - 11)
        assert expected.startswith(text), f"last line {text[:40]!r}... is not a cut line"
        return
    assert not bad, f"{len(bad)} bad lines, e.g. {[(p, t[:40]) for p, t in bad[:3]]}"


def test_a_flood_into_a_slow_console_is_held_back_with_bounded_memory(
    slow: SlowFile, tmp_path: Path
) -> None:
    baseline = warm_up()
    progress = tmp_path / "progress"
    slow.delay_s = SLOW_WRITE_S
    env = {"FLOOD_PROGRESS": str(progress)}
    (flood,) = cdsw.launch_workers(1, cpu=0.5, memory=0.2, code=FLOOD_CODE, env=env, name="flood")
    samples = watch(slow, progress, WINDOW_S)
    slow.delay_s = 0.0
    cdsw.stop_workers(flood)
    cdsw.await_workers([flood], timeout_seconds=120)
    last = samples[-1]
    growth = max(s.rss for s in samples) - baseline
    assert growth < RSS_GROWTH_LIMIT, f"session RSS grew {growth / MB:.0f} MB"
    assert max(s.in_flight for s in samples) < IN_FLIGHT_LIMIT
    assert last.written_lines < FLOOD_LINES // 4, "the flood was not held back"
    assert_flood_lines_whole_and_in_order(slow)
    assert slow.flood_next >= written_lines(progress) > 0
    print(  # for the report: pytest -s
        f"\nflood: written {last.written_lines * FLOOD_LINE_BYTES / MB:.0f} MB "
        f"in {WINDOW_S:.0f} s, shown {last.shown_lines * FLOOD_LINE_BYTES / MB:.0f} MB, "
        f"max in flight {max(s.in_flight for s in samples) / MB:.0f} MB, "
        f"RSS growth max {growth / MB:.0f} MB"
    )
