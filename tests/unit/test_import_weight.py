"""What the processes started for every worker import: nothing they do not need.

A worker's program imports ``cmlray.worker``, and each zygote (``_zygote.py``)
imports the guard's modules as it boots, before the first worker of its
node can be forked. Modules such as ``typing`` (4.5-6 ms), ``dataclasses``
with ``inspect`` (10 ms) or ``subprocess`` (3 ms) would be paid there by
every worker or by the first of each node, for annotations or for code
that only the agent runs. (The zygote also imports cmlray's worker side
ahead for its programs, ``cloudpickle`` among it, on purpose:
``_zygoteboot.py``; what is checked here is its own code and the queue
worker's.)
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("typing", "dataclasses", "inspect", "subprocess", "socket", "asyncio")


def _new_modules(statement: str) -> set[str]:
    code = (
        "import sys; before = set(sys.modules); "
        f"{statement}; print(' '.join(sorted(set(sys.modules) - before)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_a_workers_program_imports_cmlray_worker_without_heavy_modules() -> None:
    loaded = _new_modules("import cmlray.worker")
    assert "cmlray.worker" in loaded
    assert not loaded & set(HEAVY)


def test_a_zygote_boots_without_heavy_modules() -> None:
    """The zygote serves on a socket (``socket.recv_fds``); nothing else heavy."""
    loaded = _new_modules("import cmlray._zygote, cmlray._forkserver, cmlray._guard")
    assert {"cmlray._zygote", "cmlray._forkserver", "cmlray._guard"} <= loaded
    assert not loaded & (set(HEAVY) - {"socket"})
