"""A real IPython kernel (ipykernel from this venv) for tests of cmlray in Jupyter.

``kernel`` is a module-scoped fixture: a test module uses it by importing it
(``from tests.support.jupyter import Kernel, kernel``).
"""

from __future__ import annotations

import json
import queue
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ANSI = re.compile(r"\x1b\[[0-9;]*m")
KERNEL_NAME = "cmlray-test"
CELL_TIMEOUT_S = 180.0


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
