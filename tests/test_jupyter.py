"""Workers' output in Jupyter lands in the cell that launched them (SPEC: "Output").

A real IPython kernel (ipykernel, from this venv) is started with
jupyter_client; cells are executed in it and every IOPub message is
collected. Rich shows output in Jupyter as ``display_data``; ipykernel (7 and
later) files each message under the cell whose context printed it, which
for cmlray is the context of the ``launch_workers`` call, even while a later
cell runs. Progress states shown later by the relay's timer thread must land
there too (first test, without a kernel: contexts stand in for cells).
"""

from __future__ import annotations

import contextvars
import io
import json
import queue
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cmlray._relay import Relay

CELL: contextvars.ContextVar[str] = contextvars.ContextVar("cell")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
KERNEL_NAME = "cmlray-test"
CELL_TIMEOUT_S = 180.0


# --- the relay's timer keeps each stream's context (no kernel) ------------------------


class CellFile(io.StringIO):
    """A console file that records which "cell" (context) each write ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, str]] = []

    def write(self, text: str) -> int:
        self.writes.append((CELL.get("no cell"), text))
        return super().write(text)


def in_cell(cell: str, relay: Relay, name: str, lines: list[str]) -> None:
    """``relay.lines(name, "err", lines)`` in a fresh context where ``CELL`` is ``cell``."""

    def run() -> None:
        CELL.set(cell)
        relay.lines(name, "err", lines)

    contextvars.Context().run(run)


def test_held_back_progress_states_are_shown_in_their_batchs_context() -> None:
    now = [0.0]
    timers: list[Callable[[], None]] = []
    file = CellFile()
    relay = Relay(
        Console(file=file, force_terminal=False, width=120),
        clock=lambda: now[0],
        schedule=lambda _delay, callback: timers.append(callback),
    )
    for cell, name in (("cell 2", "a"), ("cell 5", "b")):
        in_cell(cell, relay, name, ["1%\r"])  # shown at once
        in_cell(cell, relay, name, ["2%\r"])  # held back
    now[0] = 1.0
    contextvars.Context().run(timers.pop())  # the timer's own thread: no cell
    assert file.writes == [
        ("cell 2", "[a:err] 1%\n"),
        ("cell 5", "[b:err] 1%\n"),
        ("cell 2", "[a:err] 2%\n"),
        ("cell 5", "[b:err] 2%\n"),
    ]


# --- a real kernel ------------------------------------------------------------------------


class Kernel:
    """A running IPython kernel, its client, and every IOPub message so far."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.client = manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=120)
        self.messages: list[dict[str, Any]] = []

    def execute(self, code: str) -> str:
        """Run a cell to its end; returns its msg_id. Fails if the cell raised."""
        msg_id = str(self.client.execute(code))
        self.collect_until(lambda: self._idle(msg_id))
        reply = self._reply_to(msg_id)
        errors = [m["content"] for m in self.of(msg_id) if m["msg_type"] == "error"]
        assert reply["content"]["status"] == "ok", errors
        return msg_id

    def _reply_to(self, msg_id: str) -> dict[str, Any]:
        """The shell reply to ``msg_id``; replies to earlier requests are skipped.

        On a loaded machine ``wait_for_ready`` may send kernel_info twice, and the
        second reply then waits in the shell channel ahead of the cell's.
        """
        deadline = time.monotonic() + CELL_TIMEOUT_S
        while True:
            reply = self.client.get_shell_msg(timeout=max(deadline - time.monotonic(), 0.1))
            if reply["parent_header"].get("msg_id") == msg_id:
                return dict(reply)
            assert reply["msg_type"] == "kernel_info_reply", reply  # nothing else is stale

    def _idle(self, msg_id: str) -> bool:
        return any(
            m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
            for m in self.of(msg_id)
        )

    def collect_until(self, done: Callable[[], bool], timeout_s: float = CELL_TIMEOUT_S) -> None:
        """Read IOPub messages until ``done()`` (or fail after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, "timed out waiting for the kernel"
            try:
                self.messages.append(self.client.get_iopub_msg(timeout=0.5))
            except queue.Empty:
                continue

    def of(self, msg_id: str) -> list[dict[str, Any]]:
        """The IOPub messages filed under the cell ``msg_id``."""
        return [m for m in self.messages if m["parent_header"].get("msg_id") == msg_id]

    def shown(self) -> list[tuple[str, str]]:
        """(cell msg_id, text line) for every line of output shown so far."""
        lines = []
        for message in self.messages:
            text = output_text(message)
            for line in text.splitlines():
                lines.append((message["parent_header"].get("msg_id", ""), line))
        return lines


def output_text(message: dict[str, Any]) -> str:
    """The plain text a stream or display message shows (ANSI colours removed)."""
    content = message["content"]
    if message["msg_type"] == "stream":
        return str(content["text"])
    if message["msg_type"] in ("display_data", "update_display_data"):
        return ANSI.sub("", content["data"].get("text/plain", ""))
    return ""


def write_kernelspec(directory: Path) -> None:
    """A kernelspec for this venv's interpreter (never another Python on PATH)."""
    spec_dir = directory / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "cmlray test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def kernel(no_leaks: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """A python3 kernel of this venv; cmlray is shut down and the kernel ended after."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    kernels = tmp_path_factory.mktemp("kernels")
    write_kernelspec(kernels)
    specs = KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)
    manager = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)
    manager.start_kernel(cwd=str(tmp_path_factory.mktemp("notebook")))
    running = None
    try:
        running = Kernel(manager)
        yield running
        running.execute("import cmlray; cmlray.shutdown()")
    finally:
        if running is not None:
            running.client.stop_channels()
        manager.shutdown_kernel(now=False)


LAUNCH_CELL = """
import cmlray
w = cmlray.launch_workers(2, cpu=0.5, memory=0.2, code="print('hello from worker')")
cmlray.await_workers(w)
"""


def test_workers_lines_arrive_in_the_launching_cell(kernel: Kernel) -> None:
    cell = kernel.execute(LAUNCH_CELL)
    want = {"[worker-1] hello from worker", "[worker-2] hello from worker"}
    kernel.collect_until(lambda: want <= {line for _, line in kernel.shown()})
    hello = [(parent, line) for parent, line in kernel.shown() if "hello from worker" in line]
    assert sorted(hello) == sorted((cell, line) for line in want)
    kinds = {m["msg_type"] for m in kernel.of(cell) if "hello from worker" in output_text(m)}
    assert kinds <= {"stream", "display_data"}


PROGRESS_WORKER = (
    "import sys, time\\n"
    "for i in range(30):\\n"
    "    sys.stderr.write(f'\\\\rstep {i}'); sys.stderr.flush(); time.sleep(0.1)\\n"
    "sys.stderr.write('\\\\n'); print('done')"
)


def test_a_worker_keeps_its_launching_cell_while_a_later_cell_runs(kernel: Kernel) -> None:
    # Self-contained: in any order, this cell imports cmlray (a session starts if none runs).
    launch = kernel.execute(
        "import cmlray\n"
        f'w2 = cmlray.launch_workers(1, cpu=0.5, memory=0.2, code="{PROGRESS_WORKER}", name="bar")'
    )
    later = kernel.execute("cmlray.await_workers(w2); print('later cell done')")
    kernel.collect_until(lambda: (launch, "[bar] done") in kernel.shown())
    bar = [(parent, line) for parent, line in kernel.shown() if line.startswith("[bar")]
    steps = [line for _, line in bar if line.startswith("[bar:err] step ")]
    assert len(steps) >= 2, bar  # one at once, later ones by the relay's timer
    assert {parent for parent, _ in bar} == {launch}, bar
    assert (later, "later cell done") in kernel.shown()
