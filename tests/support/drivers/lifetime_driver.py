"""A session that launches workers with process trees, then ends as told.

Usage: python lifetime_driver.py MODE [ADDRESS]
MODE: exit | exception, once a line arrives on stdin; or wait there for a signal.
Prints one JSON line on stdout once its workers run: the session's temp dir
and the pids of every worker's program tree.
"""

from __future__ import annotations

import json
import sys
import time

import cmlray
from cmlray import _lifecycle

TREE = (
    "!sleep 300 | cat & setsid sleep 301 & "
    'python -c \'import subprocess, time; subprocess.Popen(["sleep", "304"]); time.sleep(302)\' & '
    "echo started; sleep 303"
)


def main() -> None:
    mode = sys.argv[1]
    cmlray.init(address=sys.argv[2] if len(sys.argv) > 2 else None, num_cpus=2)
    workers = cmlray.launch_workers(2, cpu=0.5, memory=0.1, code=TREE)
    session = _lifecycle.current(create=False)
    assert session is not None
    ok = session.registry.wait_for(
        lambda: all("started" in session.registry.get(w["id"]).tail for w in workers), 60
    )
    assert ok, cmlray.list_workers()
    time.sleep(0.5)  # let the backgrounded children of `sh` start too
    ids = [w["id"] for w in workers]
    print(json.dumps({"temp_dir": session.head.temp_dir, "ids": ids}), flush=True)
    sys.stdin.readline()  # the test says when to end (or signals us meanwhile)
    if mode == "exception":
        raise RuntimeError("the session's script crashed")


if __name__ == "__main__":
    main()
