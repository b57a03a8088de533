"""A TCP port reserved for one worker alone (``CDSW_APP_PORT``).

On CML every engine has its own IP; here workers share their node's IP, so
each gets a port of its own. A free port is found by binding to port 0, and
claimed with a lock file (``O_EXCL``) under a per-user directory holding the
claimant's pid, so two workers on one node never get the same port; a stale
claim (its pid gone) is taken over.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from dataclasses import dataclass

_ATTEMPTS = 64


def _claims_dir() -> str:
    path = os.path.join(tempfile.gettempdir(), f"cmlray-ports-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


@dataclass
class PortLease:
    """A claimed port; ``release()`` gives it back."""

    port: int
    claim_path: str

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.claim_path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _claim_is_stale(path: str) -> bool:
    try:
        with open(path) as f:
            pid = int(f.read().strip() or 0)
        os.kill(pid, 0)
    except (OSError, ValueError):
        return True
    return False


def _try_claim(path: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if not _claim_is_stale(path):
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return _try_claim(path)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def lease() -> PortLease:
    """Claim a port that no other cmlray worker on this node holds."""
    directory = _claims_dir()
    for _ in range(_ATTEMPTS):
        port = _free_port()
        path = os.path.join(directory, str(port))
        if _try_claim(path):
            return PortLease(port, path)
    raise OSError("could not reserve a free TCP port for CDSW_APP_PORT")
