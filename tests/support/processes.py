"""The processes a test run started: every one inherits this run's mark.

Every process this test process starts (Ray's head, node agents, guards,
workers' programs and their children) inherits ``CMLRAY_TEST_RUN`` in its
environment, one value per test process (each pytest-xdist worker has its
own). The ``no_leaks`` fixture (tests/conftest.py) checks after each module
that none is left.
"""

from __future__ import annotations

import os
import time
import uuid

import psutil

RUN_MARK = "CMLRAY_TEST_RUN"
# One mark per test process (each pytest-xdist worker has its own), so a
# module's leak check sees only the processes its own process started.
os.environ[RUN_MARK] = uuid.uuid4().hex
LEAK_WAIT_S = 15.0


def marked_processes(mark: str | None = None) -> list[psutil.Process]:
    """Live processes (not this one) that inherited this run's mark."""
    needle = f"{RUN_MARK}={mark or os.environ[RUN_MARK]}".encode()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            with open(f"/proc/{proc.pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0") and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def marked_commands(mark: str | None = None) -> list[str]:
    """The command lines of the live marked processes (those ending meanwhile left out)."""
    commands = []
    for proc in marked_processes(mark):
        try:
            commands.append(" ".join(proc.cmdline()))
        except psutil.Error:
            continue
    return commands


def marked_environment_values(name: str, mark: str | None = None) -> set[str]:
    """The values of variable ``name`` in the live marked processes' environments."""
    prefix = f"{name}=".encode()
    values = set()
    for proc in marked_processes(mark):
        try:
            with open(f"/proc/{proc.pid}/environ", "rb") as f:
                entries = f.read().split(b"\0")
        except OSError:
            continue
        values |= {e[len(prefix) :].decode() for e in entries if e.startswith(prefix)}
    return values


def wait_no_marked_processes(timeout_s: float = LEAK_WAIT_S, mark: str | None = None) -> list[str]:
    """Wait until no marked process is left; returns descriptions of those still there."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = marked_processes(mark)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    described = []
    for proc in left:
        try:
            described.append(f"{proc.pid} {' '.join(proc.cmdline())[:150]}")
        except psutil.Error:
            continue
    return described
