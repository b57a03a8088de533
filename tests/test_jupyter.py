"""Workers' output in Jupyter lands in the cell that launched them.

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
from collections.abc import Callable

from rich.console import Console

from cmlray._relay import Relay
from tests.support.jupyter import Kernel, kernel, output_text  # noqa: F401 - the kernel fixture

CELL: contextvars.ContextVar[str] = contextvars.ContextVar("cell")


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


LAUNCH_CELL = """
import cmlray
w = cmlray.launch_workers(2, cpu=0.5, memory=0.2, code="print('hello from worker')")
cmlray.await_workers(w)
"""


def test_workers_lines_arrive_in_the_launching_cell(kernel: Kernel) -> None:  # noqa: F811
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


def test_a_worker_keeps_its_launching_cell_while_a_later_cell_runs(kernel: Kernel) -> None:  # noqa: F811
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
