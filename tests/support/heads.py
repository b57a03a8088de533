"""The processes of a Ray head, found by its private temp dir."""

from __future__ import annotations

import psutil


def head_commands(temp_dir: str) -> list[tuple[psutil.Process, str]]:
    """The processes of the head whose temp dir is ``temp_dir``, with their command lines."""
    ours = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if temp_dir in cmdline:
            ours.append((proc, cmdline))
    return ours


HEAD_EXTRAS = (
    "dashboard/dashboard.py",
    "autoscaler/_private/monitor.py",
    "_private/log_monitor.py",
)
