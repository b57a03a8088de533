"""``cmlray launch``'s live table in a real terminal (tmux), and in a real Jupyter kernel.

tmux: the command runs in a detached tmux session of a fixed size, on a tmux
server of this test's own (``-S``: its socket in the test's temp dir, gone
with it), whose screen is read with
``capture-pane``: the table shows the workers running, changes as they
finish, and gives way to the summary. The server inherits this run's leak
mark, so the leak check covers it and everything the command started.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.jupyter import Kernel, kernel  # noqa: F401 - the kernel fixture

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaks")]
DEADLINE_S = 120.0
WIDTH, HEIGHT = 120, 40


class Tmux:
    """A tmux server of its own (its socket in ``folder``) with one session running ``command``."""

    def __init__(self, command: str, folder: Path) -> None:
        self.socket = str(folder / f"tmux-{uuid.uuid4().hex[:8]}")
        self.run("new-session", "-d", "-s", "t", "-x", str(WIDTH), "-y", str(HEIGHT), command)

    def run(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", self.socket, *args], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t")

    def wait_screen(self, condition: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            screen = self.screen()
            if condition(screen):
                return screen
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}; screen:\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=30)


# One worker ends when "one" appears (the first to claim it), the others on "all":
# the test decides when the table changes.
WORKER_CODE = """
import os, time
os.chdir({tmp!r})
print('waiting', flush=True)
block = b'x' * (50 << 20)
while True:
    if os.path.exists('all'):
        break
    if os.path.exists('one'):
        try:
            os.close(os.open('claimed', os.O_CREAT | os.O_EXCL))
            break
        except FileExistsError:
            pass
    time.sleep(0.05)
print('released', flush=True)
"""


@pytest.fixture
def tmux_launch(tmp_path: Any) -> Iterator[tuple[Tmux, Any]]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    code = WORKER_CODE.format(tmp=str(tmp_path))
    command = [sys.executable, "-m", "cmlray", "launch", "-n", "3", "--cpu", "0.25"]
    command += ["--memory", "0.3", "--code", code, "--logs", "worker-2"]
    # As a terminal's shell runs it: its size from the terminal, not from variables.
    command = ["env", "-u", "COLUMNS", "-u", "LINES", *command]
    shell = f"{shlex.join(command)}; echo $? > {tmp_path / 'exit-status'}; sleep 600"
    tmux = Tmux(shell, tmp_path)
    try:
        yield tmux, tmp_path
    finally:
        tmux.kill()


def _row(screen: str, name: str) -> list[str]:
    for line in screen.splitlines():
        if line.startswith(name + " "):
            return line.split()
    return []


def _memory_gib(screen: str, name: str) -> float:
    """The memory in use on the worker's row (``0.06/0.3``), or 0 when not known yet."""
    row = _row(screen, name)
    if len(row) <= 5 or not row[5].endswith("/0.3") or row[5].startswith("-"):
        return 0.0
    return float(row[5].split("/")[0])


def _memory_shown(screen: str) -> bool:
    """Every worker's row shows the 50 MiB it holds (about 0.06 GiB) of its 0.3."""
    return all(_memory_gib(screen, f"worker-{k}") >= 0.05 for k in (1, 2, 3))


def test_the_cli_shows_a_live_table_in_a_terminal(tmux_launch: tuple[Tmux, Any]) -> None:
    tmux, tmp_path = tmux_launch
    screen = tmux.wait_screen(lambda s: "3 workers: 3 running" in s, "the workers running")
    assert _row(screen, "name")[:6] == ["name", "status", "node", "time", "cpu", "memory"]
    assert [_row(screen, f"worker-{k}")[1] for k in (1, 2, 3)] == ["running"] * 3
    screen = tmux.wait_screen(_memory_shown, "memory figures")
    assert all(_memory_gib(screen, f"worker-{k}") <= 0.2 for k in (1, 2, 3))
    (tmp_path / "one").touch()
    screen = tmux.wait_screen(lambda s: "3 workers: 2 running, 1 succeeded" in s, "one worker done")
    statuses = sorted(_row(screen, f"worker-{k}")[1] for k in (1, 2, 3))
    assert statuses == ["running", "running", "succeeded"]
    assert "] released" in screen  # its output scrolled above the panel
    (tmp_path / "all").touch()
    tmux.wait_screen(lambda s: (tmp_path / "exit-status").exists(), "the command's end")
    assert (tmp_path / "exit-status").read_text().strip() == "0"
    screen = tmux.screen()
    assert " running" not in screen  # the live panel gave way to the summary
    assert "log of worker-2" in screen and "waiting\nreleased" in "\n".join(
        line.strip() for line in screen.splitlines()
    )
    summary = re.findall(r"│ worker-[123] +│ [0-9a-z]{16} +│ succeeded +│ 0 ", screen)
    assert len(summary) == 3, screen


# --- a real Jupyter kernel ------------------------------------------------------------


def _html(message: dict[str, Any]) -> str:
    return str(message["content"].get("data", {}).get("text/html", ""))


def test_jupyter_shows_list_workers_and_watch_as_html_tables(kernel: Kernel) -> None:  # noqa: F811
    kernel.execute(
        "import cmlray\n"
        "cmlray.init(num_cpus=2)\n"
        "w = cmlray.launch_workers(2, cpu=0.5, memory=0.2, code=\"print('<b>hi</b>')\")\n"
        "cmlray.await_workers(w)"
    )
    cell = kernel.execute("cmlray.list_workers()")
    (result,) = [m for m in kernel.of(cell) if m["msg_type"] == "execute_result"]
    html = _html(result)
    assert html.startswith('<table class="cmlray-workers">')
    assert html.count("<tr>") == 3 and "2 workers: 2 succeeded" in html
    assert "&lt;b&gt;hi&lt;/b&gt;" in html  # the worker's text, escaped
    assert result["content"]["data"]["text/plain"].startswith("[{'id': ")  # still a list
    watch = kernel.execute(
        "w3 = cmlray.launch_workers(1, cpu=0.5, memory=0.2, name='slow',"
        " code='import time; print(1, flush=True); time.sleep(1.5)')\n"
        "final = cmlray.watch(w3, refresh_s=0.2)\n"
        "print('watched', final[0]['status'])"
    )
    tables = [m for m in kernel.of(watch) if 'class="cmlray-workers"' in _html(m)]
    assert tables[0]["msg_type"] == "display_data"
    assert "1 worker: 1 " in _html(tables[0])
    assert tables[-1]["msg_type"] == "update_display_data"  # the same display, updated
    assert "1 worker: 1 succeeded" in _html(tables[-1])
    display_ids = {m["content"]["transient"]["display_id"] for m in tables}
    assert len(display_ids) == 1
    assert (watch, "watched succeeded") in kernel.shown()
