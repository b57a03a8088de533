"""A session in a process of its own, and what it leaves behind (a session's lifetime).

``Driver`` runs tests/support/drivers/lifetime_driver.py with a mark of its own,
so the processes it starts (and any it leaves) are found by that mark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from cmlray import _ports
from tests.support.processes import RUN_MARK, marked_commands, marked_environment_values

DRIVER = Path(__file__).parent / "drivers" / "lifetime_driver.py"
GONE_WITHIN_S = 10.0


class Driver:
    """A session process, its own mark, and what it reported once ready."""

    def __init__(self, mode: str, *extra: str) -> None:
        self.mark = uuid.uuid4().hex
        self.ports: set[int] = set()  # its workers' CDSW_APP_PORTs, once they run
        env = dict(os.environ, **{RUN_MARK: self.mark})
        self.proc = subprocess.Popen(
            [sys.executable, str(DRIVER), mode, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
            text=True,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # the workers' output comes first
            if line.startswith("{"):
                self.info = json.loads(line)
                return
        raise AssertionError(
            f"the driver died early: {self.proc.stderr.read() if self.proc.stderr else ''}"
        )

    def commands(self) -> list[str]:
        return marked_commands(self.mark)

    def wait_for_trees(self, timeout_s: float = 90) -> list[str]:
        """The commands of this session's processes, once both workers' trees are up.

        Each tree has 4 ``sleep 30x`` and a ``time.sleep(302)`` Python child;
        the last of them start a moment after the driver says it is ready.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            commands = self.commands()
            sleeps = sum(c.startswith("sleep 30") for c in commands)
            pythons = sum("time.sleep(302)" in c for c in commands)
            if (sleeps, pythons) == (8, 2) or time.monotonic() > deadline:
                return commands
            time.sleep(0.1)

    def finish(self, timeout_s: float = 60) -> tuple[int, str]:
        _, err = self.proc.communicate("go\n", timeout=timeout_s)
        return self.proc.returncode, err


def app_ports(mark: str | None) -> set[int]:
    """The CDSW_APP_PORTs of a session's running programs (read from their environment)."""
    return {int(port) for port in marked_environment_values("CDSW_APP_PORT", mark)}


def claimed(ports: set[int]) -> list[int]:
    """Those of ``ports`` still claimed on this machine (a claim file left behind)."""
    directory = _ports._claims_path()
    return sorted(port for port in ports if os.path.exists(os.path.join(directory, str(port))))
