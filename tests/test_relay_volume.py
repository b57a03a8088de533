"""Output relay under volume, end to end (the README's "From a session").

Four workers print 50,000 numbered lines each as fast as they can, through a
real session whose console is a captured non-terminal console. Every line
must be shown exactly once, whole, in order within its worker, repeated
identical lines included, and a last line without a newline must show when
its worker exits. Every output line is parsed: a split or merged line cannot
match the format.
"""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

import cmlray as cdsw
from tests.support.console import Captured

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("session")]

WORKERS = 4
LINES = 50_000
PAYLOAD = "abcdefghijklmnopqrstuvwxyz0123456789" * 2  # fixed length: a fragment cannot pass
REPEAT_EVERY = 5_000  # after every REPEAT_EVERY-th line, REPEATS identical lines
REPEATS = 3
SPLIT_EVERY = 7  # every SPLIT_EVERY-th line is written in two writes
ERR_EVERY = 10_000  # every ERR_EVERY-th line also goes to stderr
LAST = "last line, no newline"

# The worker's tag is its engine id, so a line shown under another worker's
# name is caught. PYTHONUNBUFFERED is set for workers: each write is a syscall.
WORKER_CODE = f"""
import os, sys
tag = os.environ["CDSW_ENGINE_ID"]
write, err = sys.stdout.write, sys.stderr.write
for i in range({LINES}):
    line = f"{{tag}} {{i:06d}} {PAYLOAD}\\n"
    if i % {SPLIT_EVERY} == 0:
        write(line[:20])
        write(line[20:])
    else:
        write(line)
    if i % {REPEAT_EVERY} == 0:
        for _ in range({REPEATS}):
            write(f"{{tag}} again\\n")
    if i % {ERR_EVERY} == 0:
        err(f"{{tag}} err {{i:06d}}\\n")
write(f"{{tag}} {LAST}")
"""

OUTPUT_LINE = re.compile(r"\[(?P<name>vol-\d)(?P<err>:err)?\] (?P<text>.*)")


def expected_out(tag: str) -> list[str]:
    """What one worker's stdout must show, line by line, in order."""
    lines = []
    for i in range(LINES):
        lines.append(f"{tag} {i:06d} {PAYLOAD}")
        if i % REPEAT_EVERY == 0:
            lines += [f"{tag} again"] * REPEATS
    lines.append(f"{tag} {LAST}")
    return lines


def expected_err(tag: str) -> list[str]:
    return [f"{tag} err {i:06d}" for i in range(0, LINES, ERR_EVERY)]


def parse(text: str) -> tuple[dict[tuple[str, str], list[str]], list[str]]:
    """The volume workers' lines by (name, stream), and lines that match no format."""
    streams: dict[tuple[str, str], list[str]] = defaultdict(list)
    malformed = []
    for line in text.splitlines():
        if line.startswith("[cmlray]"):
            continue
        match = OUTPUT_LINE.fullmatch(line)
        if match is None:
            malformed.append(line)
            continue
        stream = "err" if match["err"] else "out"
        streams[(match["name"], stream)].append(match["text"])
    return streams, malformed


def first_difference(got: list[str], want: list[str]) -> str:
    """Where two line lists first differ, for a readable failure."""
    for index, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"line {index}: got {a[:80]!r}, expected {b[:80]!r}"
    return f"lengths differ: got {len(got)}, expected {len(want)}"


def test_four_workers_of_50000_lines_each_arrive_whole_once_in_order(
    captured: Captured,
) -> None:
    workers = cdsw.launch_workers(WORKERS, cpu=0.5, memory=0.2, code=WORKER_CODE, name="vol")
    result = cdsw.await_workers(workers, timeout_seconds=180)
    assert not result["failures"], result["failures"]
    streams, malformed = parse(captured.text())
    assert not malformed, f"{len(malformed)} fragments, e.g. {malformed[:3]}"
    for worker in result["workers"]:
        for stream, want in (
            ("out", expected_out(worker["id"])),
            ("err", expected_err(worker["id"])),
        ):
            got = streams.pop((worker["name"], stream), [])
            assert got == want, f"{worker['name']} {stream}: {first_difference(got, want)}"
    assert not streams, f"lines from unexpected workers: {list(streams)}"
    for worker in result["workers"]:
        assert worker["tail"][-1] == f"{worker['id']} {LAST}"
