"""The head reaper: makes sure nothing of a session's Ray head outlives it.

Started by a session that runs its own head, as
``_standalone.command("cmlray._reaper")`` in a session of its own (so
Ctrl-C in the terminal does not reach it), with a pipe from the session on
its stdin. The session writes one JSON line: the
head's processes (pid and start time, so a reused pid is never hit) and the
head's private temp dir. When the pipe closes, whether the session shut
down cleanly or was SIGKILLed, the reaper waits briefly for the head to exit
on its own, then SIGTERMs and SIGKILLs what remains of those processes and
of any process with a file open in the temp dir, and removes the temp dir
and the stale CDSW_APP_PORT claims on this host.
Ray alone leaves ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent``
running after a SIGKILLed driver; never ``ray stop``, which would kill every
Ray on the machine.

Standard library only (see ``_standalone.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from typing import Any

from cmlray import _ports, _procfs

_SETTLE_S = 1.0
_GRACE_S = 2.0
_POLL_S = 0.05


def _survivors(plan: dict[str, Any]) -> list[int]:
    listed = [pid for pid, started in plan["pids"] if _procfs.start_ticks(pid) == started]
    held = _procfs.holders_of(plan["temp_dir"]) if os.path.isdir(plan["temp_dir"]) else []
    return sorted((set(listed) | set(held)) - set(plan.get("spare", [])))


def _wait_gone(plan: dict[str, Any], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (alive := _survivors(plan)) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    return alive


def _kill(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)


def sweep(plan: dict[str, Any]) -> None:
    """End every process of the head that is still alive, then remove its files."""
    alive = _wait_gone(plan, _SETTLE_S)
    if alive:
        _kill(alive, signal.SIGTERM)
        alive = _wait_gone(plan, _GRACE_S)
    while alive:
        _kill(alive, signal.SIGKILL)
        alive = _wait_gone(plan, _POLL_S * 4)
    shutil.rmtree(plan["temp_dir"], ignore_errors=True)
    # A worker's CDSW_APP_PORT claim outlives it when its agent and guard were
    # killed together; they are gone now, so such a claim is stale.
    with contextlib.suppress(OSError):
        _ports.sweep()


def main() -> int:
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)
    plan: dict[str, Any] = {"pids": [], "temp_dir": ""}
    for line in sys.stdin:
        plan.update(json.loads(line))
    if plan["temp_dir"]:
        sweep(plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
