"""The workers' table (Rich and HTML) and the log store, without Ray."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import pytest
from rich.console import Console

from cmlray._logs import WorkerLogs
from cmlray._table import WorkerList, choose_rows, format_duration, html_table, worker_table


def worker(index: int, status: str, **fields: Any) -> dict[str, Any]:
    """A worker dict as ``list_workers()`` gives it (the keys the table reads)."""
    base: dict[str, Any] = {
        "id": f"id{index:014d}",
        "name": f"worker-{index}",
        "status": status,
        "node_id": "d2e3a09b77f1",
        "duration": 12.5,
        "cpu": 1.0,
        "memory": 0.5,
        "cpu_used": 0.98,
        "memory_used": 0.31,
        "tail": [f"step {index}"],
        "reason": None,
    }
    return base | fields


def render(renderable: Any, width: int = 120) -> str:
    file = io.StringIO()
    Console(file=file, force_terminal=True, width=width, color_system=None).print(renderable)
    return file.getvalue()


def test_a_row_per_worker_under_counts_by_status() -> None:
    workers = [worker(1, "running"), worker(2, "succeeded", cpu_used=None, memory_used=None)]
    lines = render(worker_table(workers)).splitlines()
    assert lines[0].strip() == "2 workers: 1 running, 1 succeeded"
    header = ["name", "status", "node", "time", "cpu", "memory", "GiB", "last", "line"]
    assert lines[1].split() == header
    row = ["worker-1", "running", "d2e3a09b", "12.5s", "0.98/1", "0.31/0.5", "step", "1"]
    assert lines[2].split() == row
    assert lines[3].split()[:6] == ["worker-2", "succeeded", "d2e3a09b", "12.5s", "-/1", "-/0.5"]


def test_worker_text_is_literal_never_markup_or_escapes() -> None:
    evil = worker(1, "failed", name="[bold]x[/]", tail=["\x1b[2J\x1b]0;title\x07[red]boom[/red]"])
    shown = render(worker_table([evil]))
    assert "[bold]x[/]" in shown and "[red]boom[/red]" in shown
    assert "\x1b[2J" not in shown and "\x1b]0;" not in shown
    html = html_table([worker(1, "running", name="<script>alert(1)</script>")])
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_a_large_group_keeps_the_rows_that_matter_and_sums_up_the_rest() -> None:
    workers = [worker(i, "succeeded") for i in range(1, 21)]
    workers[4]["status"] = "failed"
    workers[9]["status"] = "running"
    workers[14]["status"] = "scheduling"
    shown, left = choose_rows(workers, max_rows=4)
    assert [w["name"] for w in shown] == ["worker-5", "worker-10", "worker-15"]  # launch order
    assert len(left) == 17
    text = render(worker_table(workers, max_rows=4))
    body = text.splitlines()[2:]
    assert len(body) == 4
    assert body[-1].strip() == "... 17 more: 17 succeeded"


def test_the_table_fits_a_narrow_terminal() -> None:
    long_line = "x" * 500
    text = render(worker_table([worker(1, "running", tail=[long_line])]), width=80)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" in text


@pytest.mark.parametrize(
    ("seconds", "shown"), [(None, "-"), (4.25, "4.2s"), (187, "3m07s"), (7500, "2h05m")]
)
def test_durations(seconds: float | None, shown: str) -> None:
    assert format_duration(seconds) == shown


def test_worker_list_stays_a_plain_list_of_dicts() -> None:
    workers = WorkerList([worker(1, "running"), worker(2, "failed")])
    assert isinstance(workers, list) and all(type(w) is dict for w in workers)
    assert json.loads(json.dumps(workers)) == [dict(w) for w in workers]
    assert workers[0]["name"] == "worker-1" and len(workers) == 2
    assert workers._repr_html_().startswith('<table class="cmlray-workers">')
    assert workers._repr_html_().count("<tr>") == 3  # header and two rows
    assert "2 workers: 1 running, 1 failed" in render(workers)


# --- the log store --------------------------------------------------------------------


def test_logs_keep_both_streams_in_order_and_apart() -> None:
    logs = WorkerLogs()
    logs.write("w", "a", ["o1", "o2"], "out")
    logs.write("w", "a", ["e1"], "err")
    logs.write("w", "a", ["o3", "50%\r"], "out")  # a progress state is not a line
    logs.write("w", "a", ["o4"], "out")
    assert logs.read("w") == "o1\no2\ne1\no3\no4\n"
    assert logs.read("w", "out") == "o1\no2\no3\no4\n"
    assert logs.read("w", "err") == "e1\n"
    assert logs.read("w", tail=2) == "o3\no4\n"
    assert logs.read("w", tail=0) == ""
    assert logs.read("unknown") == ""


def test_logs_spill_to_a_private_temp_dir_removed_at_the_end(tmp_path: Any) -> None:
    logs = WorkerLogs(spill_root=str(tmp_path), spill_bytes=1000)
    lines = [f"line {i:04d} " + "x" * 40 for i in range(100)]
    logs.write("small", "s", ["tiny"])
    assert os.listdir(tmp_path) == []  # nothing spilled yet
    for start in range(0, 100, 10):
        logs.write("big", "b", lines[start : start + 10], "err" if start == 50 else "out")
    (spill_dir,) = os.listdir(tmp_path)
    assert os.stat(tmp_path / spill_dir).st_mode & 0o777 == 0o700
    assert os.listdir(tmp_path / spill_dir) == ["big.log"]
    assert logs.read("big") == "".join(f"{line}\n" for line in lines)
    assert logs.read("big", "err") == "".join(f"{line}\n" for line in lines[50:60])
    logs.close("big")
    assert logs.read("big", tail=1) == lines[-1] + "\n"  # still readable once ended
    assert logs.read("small") == "tiny\n"
    logs.close_all()
    assert os.listdir(tmp_path) == []


def test_logs_in_memory_are_bounded_across_workers(tmp_path: Any) -> None:
    logs = WorkerLogs(spill_root=str(tmp_path), spill_bytes=10_000, budget_bytes=2_500)
    for index in range(10):
        logs.write(f"w{index}", "n", ["y" * 499])  # 500 bytes each
    (spill_dir,) = os.listdir(tmp_path)
    spilled = sorted(os.listdir(tmp_path / spill_dir))
    assert spilled == [f"w{index}.log" for index in range(5, 10)]
    assert all(logs.read(f"w{index}") == "y" * 499 + "\n" for index in range(10))
    logs.close_all()


def test_log_dir_files_are_plain_and_kept(tmp_path: Any) -> None:
    logs = WorkerLogs(str(tmp_path))
    logs.write("abc", "worker-1", ["out"], "out")
    logs.write("abc", "worker-1", ["err"], "err")
    assert (tmp_path / "worker-1-abc.log").read_text() == "out\nerr\n"  # readable as it grows
    assert logs.read("abc", "err") == "err\n"
    logs.close_all()
    assert (tmp_path / "worker-1-abc.log").read_text() == "out\nerr\n"


def test_an_ended_worker_shows_its_peak_memory() -> None:
    ended = worker(1, "succeeded", finished_at="2026-01-01T00:00:00.000Z", memory_peak=0.42)
    assert render(worker_table([ended])).splitlines()[2].split()[5] == "0.42/0.5"
    running = worker(2, "running", finished_at=None, memory_peak=0.42)
    assert render(worker_table([running])).splitlines()[2].split()[5] == "0.31/0.5"
