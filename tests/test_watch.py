"""Seeing the workers with real Ray: usage figures, whole logs, watch().

The module's session has no ``log_dir`` (``cmlray.logs`` must work without
one) and a captured *terminal* console, so ``watch()`` draws its live panel
on the console the workers' lines go to.
"""

from __future__ import annotations

import io
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import cmlray
from cmlray import _lifecycle

pytestmark = pytest.mark.usefixtures("session_no_log_dir")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SECRET = "s3cr3t-token-value-1234"
DEADLINE_S = 60.0


class Terminal:
    """The session's console: a terminal, captured in memory."""

    def __init__(self) -> None:
        self.file = io.StringIO()
        self.console = Console(file=self.file, force_terminal=True, width=110, height=30)

    def text(self) -> str:
        return ANSI.sub("", self.file.getvalue())


TERMINAL = Terminal()
_PROJECT: list[Any] = []  # the module session's project dir, for a test that restarts it


def _init(project: Any) -> None:
    cmlray.init(num_cpus=4, project_dir=str(project), console=TERMINAL.console)


@pytest.fixture(scope="module")
def session_no_log_dir(no_leaks: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    project = tmp_path_factory.mktemp("project")
    _PROJECT.append(project)
    _init(project)
    try:
        yield
    finally:
        cmlray.shutdown()


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    """Poll ``condition`` until it is truthy (its value is returned), or fail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def describe(worker_id: str) -> dict[str, Any]:
    (found,) = [w for w in cmlray.list_workers() if w["id"] == worker_id]
    return found


HOLD_300_MB = (
    "import time\n"
    "block = b'x' * (300 << 20)  # written, so resident\n"
    "print('holding', flush=True)\n"
    "time.sleep(600)\n"
)
# A tree: the program holds 100 MiB, its child 200 MiB.
TREE_300_MB = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', "
    "\"import time; b = b'x' * (200 << 20); print('child holds', flush=True); time.sleep(600)\"])\n"
    "block = b'x' * (100 << 20)\n"
    "time.sleep(600)\n"
)


@pytest.mark.parametrize("code", [HOLD_300_MB, TREE_300_MB], ids=["one process", "a tree"])
def test_memory_of_a_program_tree_holding_300_mb(code: str) -> None:
    (launched,) = cmlray.launch_workers(1, cpu=0.5, memory=1, code=code)
    wait_for(lambda: (describe(launched["id"])["memory_used"] or 0) >= 0.29, "0.3 GiB in use")
    running = describe(launched["id"])
    assert 0.29 <= running["memory_used"] <= 0.40  # 300 MiB = 0.293 GiB, plus interpreters
    assert running["memory_peak"] >= running["memory_used"]
    (stopped,) = cmlray.stop_workers(launched["id"])
    assert stopped.worker is not None and stopped.worker["status"] == "stopped"
    assert 0.29 <= stopped.worker["memory_peak"] <= 0.40  # kept after the end
    assert stopped.worker["memory_used"] >= 0.29


def test_a_program_shorter_than_a_sample_still_shows_its_peak() -> None:
    (launched,) = cmlray.launch_workers(1, cpu=0.5, memory=1, code="b = b'x' * (300 << 20)")
    (done,) = cmlray.await_workers(launched)["workers"]
    assert 0.29 <= done["memory_peak"] <= 0.40


BUSY_2_CPU_S = (
    "import time\nstarted = time.monotonic()\n"
    "while time.process_time() < 2.0:\n    pass\n"
    "print('burnt', time.process_time() / (time.monotonic() - started))\n"
)


def test_a_busy_loop_uses_about_one_core() -> None:
    """The samples show the cores the loop really got: one on a quiet machine, fewer beside
    a busy neighbour, as its own clocks say (never more than one)."""
    (launched,) = cmlray.launch_workers(1, cpu=1, memory=0.3, code=BUSY_2_CPU_S)
    seen: list[float] = []

    def finished() -> bool:
        worker = describe(launched["id"])
        if worker["status"] == "running" and worker["cpu_used"] is not None:
            seen.append(worker["cpu_used"])
        return worker["finished_at"] is not None

    wait_for(finished, "the busy loop's end")
    (done,) = cmlray.await_workers(launched)["workers"]
    (burnt,) = [line for line in done["tail"] if line.startswith("burnt ")]
    got_cores = float(burnt.split()[1])  # CPU time over wall time, as the program saw it
    assert seen and 0.7 * got_cores <= max(seen) <= 1.3, (seen, got_cores)
    # The program burnt 2.0 s of CPU (process_time), plus its interpreter's start.
    assert 2.0 <= done["cpu_seconds"] <= 2.6, done
    assert done["cpu_used"] == pytest.approx(done["cpu_seconds"] / done["duration"], abs=0.01)


MEGABYTE_OF_LINES = (
    "import sys\n"
    "for i in range(12000):\n"
    "    print(f'line {i:05d} ' + 'x' * 90)\n"
    "    if i % 1000 == 0:\n"
    "        print(f'err {i}', file=sys.stderr)\n"
    "print('all written', flush=True)\n"
    "sys.stdin = open(sys.argv[0]) if False else None\n"
    "import time\n"
    "while not __import__('os').path.exists('{release}'):\n"
    "    time.sleep(0.05)\n"
)


def test_logs_of_a_worker_that_printed_over_1_mb_while_it_runs_and_after(tmp_path: Any) -> None:
    release = tmp_path / "release"
    code = MEGABYTE_OF_LINES.replace("{release}", str(release))
    (launched,) = cmlray.launch_workers(1, cpu=0.5, memory=0.5, code=code, name="chatty")
    expected_out = "".join(f"line {i:05d} " + "x" * 90 + "\n" for i in range(12000))
    expected_out += "all written\n"
    expected_err = "".join(f"err {i}\n" for i in range(0, 12000, 1000))
    wait_for(lambda: cmlray.logs("chatty").endswith("all written\n"), "the whole output")
    assert describe(launched["id"])["status"] == "running"
    assert cmlray.logs("chatty", stream="out") == expected_out  # 1.2 MB, nothing lost
    assert cmlray.logs(launched, stream="err") == expected_err
    assert len(cmlray.logs(launched["id"])) == len(expected_out) + len(expected_err)
    assert cmlray.logs("chatty", tail=2, stream="out") == expected_out.splitlines(True)[-2] + (
        "all written\n"
    )
    spill_dir = _lifecycle.require().logs._spill_dir  # past 1 MiB: in a file, not in memory
    assert spill_dir is not None and os.listdir(spill_dir) == [f"{launched['id']}.log"]
    release.touch()
    cmlray.await_workers(launched)
    assert cmlray.logs("chatty", stream="out") == expected_out  # ended: still all there
    assert len(describe(launched["id"])["tail"]) == 100


def _touch_once_shown(path: Path, text: str, since: int, timeout_s: float = 120.0) -> None:
    """Create ``path`` once the terminal has shown ``text`` (or after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while text not in ANSI.sub("", TERMINAL.file.getvalue()[since:]):
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    path.touch()


def test_watch_shows_a_live_table_under_the_output_until_they_end(tmp_path: Path) -> None:
    before = len(TERMINAL.file.getvalue())
    go = tmp_path / "go"  # the programs tick once the panel has shown all three running
    code = (
        f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
        "for i in range(3):\n    print('tick', i, flush=True); time.sleep(0.2)"
    )
    workers = cmlray.launch_workers(3, cpu=0.25, memory=0.2, code=code, name="watched")
    args = (go, "3 workers: 3 running", before)
    threading.Thread(target=_touch_once_shown, args=args, daemon=True).start()
    final = cmlray.watch(workers, refresh_s=0.1)
    assert [w["status"] for w in final] == ["succeeded"] * 3
    assert isinstance(final, list) and all(type(w) is dict for w in final)
    shown = ANSI.sub("", TERMINAL.file.getvalue()[before:])
    assert "3 workers: 3 running" in shown  # a panel drawn while they ran
    assert shown.rstrip().splitlines()[-5].strip() == "3 workers: 3 succeeded"  # the last one
    for index in (1, 2, 3):
        assert f"[watched-{index}] tick 2" in shown  # their lines, printed above the panel
        assert re.search(rf"watched-{index} +succeeded .*tick 2", shown)
    assert "\x1b[2K" in TERMINAL.file.getvalue()[before:]  # Live redrew the panel in place


def test_watch_on_a_plain_console_prints_counts_then_the_table() -> None:
    file = io.StringIO()
    plain = Console(file=file, force_terminal=False, width=120)
    code = "import time; time.sleep(0.5); print('ok')"
    workers = cmlray.launch_workers(2, cpu=0.25, memory=0.2, code=code, name="plain")
    cmlray.watch(workers, console=plain, refresh_s=0.1)
    lines = file.getvalue().splitlines()
    assert "\x1b" not in file.getvalue()
    counts = [line for line in lines if line.startswith("[cmlray] 2 workers: ")]
    assert counts[-1] == "[cmlray] 2 workers: 2 succeeded"
    assert len(counts) == len(set(counts))  # printed only when the counts change
    assert [line.split()[:2] for line in lines[-2:]] == [
        ["plain-1", "succeeded"],
        ["plain-2", "succeeded"],
    ]


def test_ctrl_c_stops_watching_not_the_workers() -> None:
    (launched,) = cmlray.launch_workers(
        1, cpu=0.25, memory=0.2, code="import time; time.sleep(600)"
    )
    cmlray.await_workers(launched, wait_for_completion=False)

    def interrupt() -> None:  # what a terminal's Ctrl-C does, once watch() is waiting
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(0.5, interrupt)
    timer.start()
    try:
        (seen,) = cmlray.watch(launched, refresh_s=0.1)
    finally:
        timer.join()
    assert seen["status"] == "running"
    assert describe(launched["id"])["status"] == "running"
    (stopped,) = cmlray.stop_workers(launched)
    assert stopped.status == "stopped"


def test_no_secret_from_env_is_shown() -> None:
    before = len(TERMINAL.file.getvalue())
    env = {"API_TOKEN": SECRET}
    workers = cmlray.launch_workers(1, cpu=0.25, memory=0.2, code="print('working')", env=env)
    final = cmlray.watch(workers, refresh_s=0.1)
    assert SECRET not in TERMINAL.file.getvalue()[before:]
    assert SECRET not in final._repr_html_() and SECRET not in repr(final)
    assert SECRET not in cmlray.logs(workers[0])
    rich_file = io.StringIO()
    Console(file=rich_file, width=200).print(cmlray.list_workers())
    assert SECRET not in rich_file.getvalue()


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: cmlray.logs(42), TypeError, "worker must be one worker id, name or dict"),
        (lambda: cmlray.logs(["a"]), TypeError, "worker must be one"),
        (lambda: cmlray.logs("no-such-worker"), ValueError, "launched no worker 'no-such-worker'"),
        (
            lambda: cmlray.logs("chatty", stream="both"),
            ValueError,
            "stream must be 'all', 'out' or 'err'",
        ),
        (lambda: cmlray.logs("chatty", tail=-1), ValueError, "tail must be >= 0"),
        (lambda: cmlray.logs("chatty", tail=True), TypeError, "tail must be a whole number"),
        (lambda: cmlray.logs("chatty", tail=2.5), TypeError, "tail must be a whole number"),
        (
            lambda: cmlray.watch(refresh_s=0),
            ValueError,
            "refresh_s must be a number of seconds > 0",
        ),
        (lambda: cmlray.watch(refresh_s="1"), TypeError, "refresh_s must be a number"),
        (lambda: cmlray.watch(5), TypeError, "workers must be a worker id, name or dict"),
        (lambda: cmlray.watch(["nope"]), ValueError, "workers: this session launched no worker"),
        (lambda: cmlray.watch(console="stdout"), TypeError, "console must be a rich"),
    ],
)
def test_bad_arguments_are_named(call: Callable[[], Any], error: type, words: str) -> None:
    count = len(cmlray.list_workers())
    with pytest.raises(error, match=re.escape(words)):
        call()
    assert len(cmlray.list_workers()) == count


def test_session_end_removes_the_spilled_logs(tmp_path: Any) -> None:
    # Its own worker past 1 MiB, so the spill exists whatever ran before (shuffled order).
    code = MEGABYTE_OF_LINES.replace("{release}", str(tmp_path / "release"))
    (launched,) = cmlray.launch_workers(1, cpu=0.5, memory=0.5, code=code, name="spiller")
    wait_for(lambda: cmlray.logs(launched).endswith("all written\n"), "the whole output")
    spill_dir = _lifecycle.require().logs._spill_dir
    assert spill_dir is not None and os.path.isdir(spill_dir)
    (tmp_path / "release").touch()
    assert cmlray.await_workers(launched, timeout_seconds=120)["workers"]
    cmlray.shutdown()
    assert not os.path.exists(spill_dir)
    _init(_PROJECT[-1])  # the module's session again, for the tests after this one
