"""A minimal own head's dashboard agent: a stand-in that lives as long as its raylet.

A raylet starts two agents and fate-shares with each (Ray's ``agent_manager``:
when one exits, the raylet shuts down). Started ``--minimal`` without a
dashboard, the dashboard agent serves nothing (its ports are -1,
``_rayletcommand.py``) and records its address for a dashboard that does not
run; it is still a Python process that imports Ray, 0.6-0.9 s of CPU. An own
head's session no longer waits for it, so it booted during the first seconds
of the user's work, starved at the lowest priority by busy workers: 31 ms of
CPU a second beside two of them, 2 s after the start (``benchmarks/runtime_floor.py``).

This stand-in does what the raylet needs of it: it runs until its raylet is
gone (its parent changes: Ray's own agents poll the same way, once a second
by default), then exits. Standard library only, run as ``python -I -S`` on
this file (``_standalone.py`` explains why).
"""

from __future__ import annotations

import os
import signal
import sys
import time

POLL_S = 1.0


def main() -> int:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # the raylet's end
    raylet = os.getppid()
    while os.getppid() == raylet:
        time.sleep(POLL_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
