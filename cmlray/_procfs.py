"""Reading Linux's ``/proc``: one parser for a process's stat line, its children, its files.

Every part of cmlray that looks at processes (the guard's stop ladder and
usage sampling, the head reaper, the session finding its head's processes)
reads them through this module, so ``/proc/<pid>/stat`` is parsed in one
place. Walking a tree reads ``/proc/<pid>/task/<tid>/children`` of the
tree's own processes, never every process of the machine: on a node running
a thousand workers, a guard stopping its program must not scan them all.

Standard library only (see ``_standalone.py``).
"""

from __future__ import annotations

import os

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Stat:
    """The fields of ``/proc/<pid>/stat`` cmlray uses.

    Attributes:
        pid: the process.
        zombie: it exited and waits to be reaped.
        ppid: its parent.
        cpu_ticks: user and system time, its own and its reaped children's.
        start_ticks: when it started, in clock ticks since boot (tells reused pids apart).
        rss_pages: its resident set, in pages.
        threads: how many threads it has.

    A plain class, not a dataclass: the zygote (``_zygote.py``) imports this
    module as it boots, and ``dataclasses`` (with ``inspect``) took 10 ms of
    the 60-90 ms before the first worker could be forked.
    """

    __slots__ = ("cpu_ticks", "pid", "ppid", "rss_pages", "start_ticks", "threads", "zombie")

    def __init__(
        self,
        *,
        pid: int,
        zombie: bool,
        ppid: int,
        cpu_ticks: int,
        start_ticks: int,
        rss_pages: int,
        threads: int = 1,
    ) -> None:
        self.pid = pid
        self.zombie = zombie
        self.ppid = ppid
        self.cpu_ticks = cpu_ticks
        self.start_ticks = start_ticks
        self.rss_pages = rss_pages
        self.threads = threads


def stat(pid: int) -> Stat | None:
    """``pid``'s stat line, parsed; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            line = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = line[line.rfind(b")") + 2 :].split()
    try:
        return Stat(
            pid=pid,
            zombie=fields[0] == b"Z",
            ppid=int(fields[1]),
            cpu_ticks=sum(int(value) for value in fields[11:15]),  # utime stime cutime cstime
            start_ticks=int(fields[19]),
            rss_pages=int(fields[21]),
            threads=int(fields[17]),
        )
    except (IndexError, ValueError):
        return None


def children(pid: int, threads: int = 0) -> list[int]:
    """``pid``'s child processes, from every one of its threads' children lists.

    ``threads=1`` (known from its stat) reads the one list without listing
    the threads first: most processes of a program's tree have one thread.
    """
    found: list[int] = []
    try:
        tasks = [str(pid)] if threads == 1 else os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(child) for child in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` (parents before their children), zombies included."""
    found: list[int] = []
    seen = {pid}
    stack = children(pid)
    while stack:
        child = stack.pop()
        if child in seen:
            continue
        seen.add(child)
        found.append(child)
        stack.extend(children(child))
    return found


def alive(pids: list[int]) -> list[int]:
    """The processes of ``pids`` that exist and are not zombies."""
    return [pid for pid in pids if (s := stat(pid)) is not None and not s.zombie]


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), None if it is gone."""
    found = stat(pid)
    return None if found is None else found.start_ticks


def cmdline(pid: int) -> bytes:
    """``pid``'s command line, NUL-separated; empty when it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def holders_of(directory: str) -> list[int]:
    """Processes (of this user, readable here) with a file, or their cwd, under ``directory``."""
    prefix = os.path.realpath(directory) + os.sep
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            links = [os.readlink(f"/proc/{entry}/cwd")]
            fd_dir = f"/proc/{entry}/fd"
            links += [os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)]
        except OSError:
            continue
        if any(link.startswith(prefix) for link in links):
            found.append(int(entry))
    return found
