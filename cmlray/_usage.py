"""A worker's program tree's memory and CPU use, sampled from ``/proc`` by its guard.

Standard library only (see ``_standalone.py``): the guard runs it in a bare
interpreter.

The tree is the guard's descendants (the guard is a child subreaper, so
daemons the program started stay below it). Memory is their resident set
summed; CPU time counts live and not yet reaped processes (each with its own
reaped children, ``cutime``/``cstime``) plus what the guard reaped itself
(``RUSAGE_CHILDREN``), so the figure never drops when a child ends. The walk
reads ``/proc/<pid>/task/<tid>/children`` of the tree's processes only, not
every process of the machine (``_procfs.descendants``), so a sample costs
little even on a busy host.
"""

from __future__ import annotations

import resource
import time

from cmlray import _procfs

TYPE_CHECKING = False  # (the zygote imports this module as it boots: see _procfs.Stat)
if TYPE_CHECKING:
    from typing import Any

_MIB = 1 << 20
RATE_WINDOW_S = 0.5


BASE_INTERVAL_S = 1.0
IDLE_INTERVAL_S = 4.0
NEAR_LIMIT_INTERVAL_S = 0.25


def tree_sample(root_pid: int) -> tuple[int, float]:
    """(resident bytes, CPU seconds) of ``root_pid``'s descendants, the root excluded.

    One walk: each process's stat line gives its figures and its thread
    count, so a single-threaded process's children are read without listing
    its threads. The CPU seconds leave out children the root itself already
    reaped (see :meth:`UsageMeter.sample`, which adds them).
    """
    rss_pages = ticks = 0
    seen = {root_pid}
    stack = _procfs.children(root_pid, threads=1)  # the guard has one thread
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        stat = _procfs.stat(pid)
        if stat is None:
            continue
        ticks += stat.cpu_ticks
        if not stat.zombie:
            rss_pages += stat.rss_pages
            stack.extend(_procfs.children(pid, stat.threads))
    return rss_pages * _procfs.PAGE_BYTES, ticks / _procfs.CLOCK_TICKS


def next_interval_s(
    previous_s: float, changed: bool, headroom_bytes: int | None, growth_bytes_per_s: float
) -> float:
    """How long until the guard samples its tree again.

    Every second while the figures change; twice as long after each sample
    that changed nothing, up to ``IDLE_INTERVAL_S`` (a node running a
    thousand sleeping workers must not spend a core sampling them). With a
    memory limit, sooner when the tree grows fast enough to reach it before
    then: at half the time it would take, every quarter second at the most.
    """
    interval = (
        BASE_INTERVAL_S if changed else min(IDLE_INTERVAL_S, max(BASE_INTERVAL_S, previous_s * 2))
    )
    if headroom_bytes is not None and growth_bytes_per_s > 0:
        reach_s = max(0, headroom_bytes) / growth_bytes_per_s
        interval = min(interval, max(NEAR_LIMIT_INTERVAL_S, reach_s / 2))
    return interval


def _reaped_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class UsageMeter:
    """The tree's usage now, its peak, and the CPU cores it used since the last sample.

    Args:
        root_pid: the guard's pid (the tree is its descendants).
        clock: monotonic seconds; injectable for tests.
    """

    def __init__(
        self, root_pid: int, clock: Any = time.monotonic, rate_window_s: float = RATE_WINDOW_S
    ) -> None:
        self.root_pid = root_pid
        self.clock = clock
        self.rate_window_s = rate_window_s
        self.rss_bytes = 0
        self.peak_rss_bytes = 0
        self.cpu_s = 0.0
        self.cores = 0.0
        self._rate_from: tuple[float, float] | None = None  # (time, cpu_s) the rate starts at
        self._sent: tuple[int, int, float, float] | None = None

    def sample(self) -> int:
        """Read the tree's usage now; returns its resident bytes.

        The cores are CPU seconds over wall seconds since the previous rate
        point, taken at least ``rate_window_s`` apart: the memory limit check
        samples more often, and CPU ticks (10 ms) over a shorter interval
        would read as noise.
        """
        rss_bytes, live_cpu_s = tree_sample(self.root_pid)
        # max(): a child reaped between the two reads must not make the total drop.
        self.cpu_s = max(self.cpu_s, live_cpu_s + _reaped_cpu_s())
        now = self.clock()
        if self._rate_from is None:
            self._rate_from = (now, self.cpu_s)
        elif now - self._rate_from[0] >= self.rate_window_s:
            self.cores = (self.cpu_s - self._rate_from[1]) / (now - self._rate_from[0])
            self._rate_from = (now, self.cpu_s)
        self.rss_bytes = rss_bytes
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss_bytes)
        return rss_bytes

    def report(self) -> dict[str, Any]:
        """The usage as the guard sends it (``{"usage": report}``)."""
        return {
            "rss_bytes": self.rss_bytes,
            "peak_rss_bytes": self.peak_rss_bytes,
            "cpu_s": round(self.cpu_s, 3),
            "cores": round(self.cores, 3),
        }

    def changed_report(self) -> dict[str, Any] | None:
        """The report if it differs (to a MiB, a hundredth) from the one sent last, else None."""
        key = (
            self.rss_bytes // _MIB,
            self.peak_rss_bytes // _MIB,
            round(self.cpu_s, 2),
            round(self.cores, 2),
        )
        if key == self._sent:
            return None
        self._sent = key
        return self.report()

    def final_report(self) -> dict[str, Any]:
        """The report once the program has ended: CPU of the whole run, the true peak.

        A program shorter than a sample interval was never sampled; the
        largest reaped process's own peak (``ru_maxrss``, KiB) still counts.
        The resident memory stays the last one sampled while it ran.
        """
        self.cpu_s = max(self.cpu_s, _reaped_cpu_s())
        max_rss_bytes = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        self.peak_rss_bytes = max(self.peak_rss_bytes, max_rss_bytes)
        report = self.report()
        report.pop("cores")
        return report
