"""Teardown of the namespace hosts: kill, unmount, delete, sweep, reap (root only).

Everything of a run is named from its run id (see ``_netns.Layout``), so
teardown needs no other state, is idempotent and carries on past failures.
Stdlib only, because it also runs as the reaper: a process holding the read
end of a pipe from the cluster's owner, which tears the run down when the
owner dies by any path (SIGKILL included):
``python -m tests.clusters.netns_cleanup reap <run id>`` (from the checkout).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from tests.clusters.netns import (
    DATA_ROOT,
    PREFIX,
    RUN_ID,
    RUN_ROOT,
    Layout,
    ip,
    netns_pids,
    owner_alive,
)

KILL_DEADLINE_S = 20.0


def kill_netns(netns: str, deadline_s: float = KILL_DEADLINE_S) -> list[int]:
    """SIGKILLs every process in a network namespace until none is left.

    Returns:
        The pids still there at the deadline (empty when all are gone).
    """
    deadline = time.monotonic() + deadline_s
    while (pids := netns_pids(netns)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    return pids


def leftovers(layout: Layout) -> list[str]:
    """What is left of a run: namespaces, links, dirs (processes: see ``marked_pids``)."""
    left = [f"netns {layout.netns(h)}" for h in _hosts_from_netns(layout)]
    left += [f"link {link}" for link in _links(layout)]
    left += [f"dir {p}" for p in (layout.run_dir, layout.data_dir) if p.exists()]
    return left


def teardown(layout: Layout) -> list[str]:
    """Removes every process, mount, namespace, link and dir of a run.

    Idempotent and tolerant: carries on past each failure.

    Returns:
        Descriptions of what could not be removed (empty on success).
    """
    problems: list[str] = []
    hosts = layout.hosts or _hosts_from_netns(layout)
    for host in hosts:
        left = kill_netns(layout.netns(host))
        if left:
            problems.append(f"processes left in {layout.netns(host)}: {left}")
    for host in hosts:
        _umount(layout.mnt_file(host), problems)
        if Path(f"/run/netns/{layout.netns(host)}").exists():
            done = ip("netns", "del", layout.netns(host), check=False)
            if done.returncode != 0:
                problems.append(done.stderr.strip())
    for link in _links(layout):
        ip("link", "del", link, check=False)
    _umount(layout.run_dir / "mnt", problems)
    shutil.rmtree(layout.data_dir, ignore_errors=True)
    shutil.rmtree(layout.run_dir, ignore_errors=True)
    problems += [f"left: {p}" for p in (layout.data_dir, layout.run_dir) if p.exists()]
    return problems


def _umount(path: Path, problems: list[str]) -> None:
    """Unmounts ``path`` if something is mounted there."""
    if not os.path.ismount(path) and not _is_nsfs_mount(path):
        return
    done = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        problems.append(f"umount {path}: {done.stderr.strip()}")


def _is_nsfs_mount(path: Path) -> bool:
    """Whether a namespace file is bind-mounted on ``path`` (ismount misses those)."""
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == str(path) for line in mounts)


def _hosts_from_netns(layout: Layout) -> tuple[str, ...]:
    """The hosts of a run whose hosts file is lost, from its namespace names."""
    stem = f"{PREFIX}{layout.run_id}-"
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return ()
    return tuple(n[len(stem) :] for n in names if n.startswith(stem))


def _links(layout: Layout) -> list[str]:
    """The run's links in the root namespace (veth ends and the bridge)."""
    out = ip("-o", "link", "show", check=False).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return [n for n in names if n == layout.bridge or n.startswith(layout.bridge + "-")]


def leftover_run_ids() -> set[str]:
    """Run ids of every run with something left on this machine, live or not."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        found |= _ids(os.listdir(RUN_ROOT))
    with contextlib.suppress(OSError):
        found |= _ids(os.listdir(DATA_ROOT))
    with contextlib.suppress(OSError):
        found |= _ids(os.listdir("/run/netns"))
    out = ip("-o", "link", "show", check=False).stdout
    found |= _ids(line.split(":")[1].strip() for line in out.splitlines())
    return found


def _ids(names: Iterable[str]) -> set[str]:
    """The run ids in a list of names (dirs, namespaces, links)."""
    ids = set()
    for name in names:
        match = RUN_ID.match(name)
        if match:
            ids.add(match.group(1))
    return ids


def sweep() -> list[str]:
    """Tears down every earlier run whose owner is dead; returns their run ids."""
    swept = []
    for run_id in sorted(leftover_run_ids()):
        layout = Layout.load(run_id)
        # A run dir is made first and removed last, so a live run always has one.
        if layout.run_dir.exists() and owner_alive(layout):
            continue
        teardown(layout)
        swept.append(run_id)
    return swept


def reap(run_id: str) -> None:
    """Waits for EOF on stdin (the owner closed it or died), then tears the run down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C for the owner is not for us
    while sys.stdin.buffer.read(4096):
        pass
    layout = Layout.load(run_id)
    if layout.run_dir.exists() or layout.data_dir.exists() or _hosts_from_netns(layout):
        for problem in teardown(layout):
            print(f"cmlray netcluster reaper: {problem}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "reap":
        reap(sys.argv[2])
    else:
        sys.exit(f"usage: {sys.argv[0]} reap <run id>")
