"""Ray alone on the hosts of the namespace test cluster: its venv, how a host starts it.

A real node of a user's cluster has Ray (same Python minor version) and
nothing else: no cmlray, no test dependencies. This venv stands for that
install. It is built once per Ray and Python version, outside the checkout,
under a file lock (concurrent test processes wait for one build), and reused
by later runs. A venv is not relocatable, so it is built in place and marked
complete only at the end; an incomplete one is rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CACHE_ROOT = Path(os.environ.get("CMLRAY_RAYONLY_ROOT", "/var/tmp"))
COMPLETE_MARK = ".cmlray-complete"
BUILD_TIMEOUT_S = 1800.0


HEAD_PORT = 6379
OBJECT_STORE_BYTES = 100 * 1024 * 1024
# The head declares a node dead after 5 failed health checks 1 s apart (each
# may take up to 2 s) instead of Ray's 5 x 3 s (+10 s), so crash and
# partition tests see "node lost" in seconds; lenient enough for a loaded box.
FAST_FAULT_DETECTION = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "2000",
    "RAY_health_check_failure_threshold": "5",
}


@dataclass(frozen=True)
class HostSpec:
    """What one host declares to Ray; the first host of a cluster is the head."""

    name: str
    num_cpus: int = 2
    num_gpus: int = 0
    memory_gib: float = 4.0  # Ray's logical memory, fixed so tests don't depend on the machine
    resources: dict[str, float] = field(default_factory=dict)
    sees_checkout: bool = False  # the session host has the project; nodes don't


DEFAULT_HOSTS = (
    HostSpec("h0", sees_checkout=True),
    HostSpec("h1"),
    HostSpec("h2", num_gpus=2, resources={"gpu_host": 1.0}),
)


def ray_version() -> str:
    """The Ray version of the test interpreter: the nodes get exactly this one."""
    return importlib.metadata.version("ray")


def base_python() -> Path:
    """The interpreter the test venv was made from (the nodes' "system" Python)."""
    return Path(getattr(sys, "_base_executable", sys.executable)).resolve()


def venv_path(extras: tuple[str, ...] = ()) -> Path:
    """Where the Ray-only venv (with ``extras``, if any) for this Ray and Python lives."""
    py = ".".join(map(str, sys.version_info[:3]))
    name = f"cmlray-rayonly-{ray_version()}-py{py}"
    if extras:
        name += "-" + hashlib.sha256(" ".join(sorted(extras)).encode()).hexdigest()[:10]
    return CACHE_ROOT / name


def pinned(*distributions: str) -> tuple[str, ...]:
    """``name==version`` of each as the test venv has it (nodes must match the session)."""
    return tuple(f"{d}=={importlib.metadata.version(d)}" for d in distributions)


def ray_only_venv(extras: tuple[str, ...] = ()) -> Path:
    """The Ray-only venv, built now if no complete one exists.

    Args:
        extras: more requirements, for nodes of a user's image that has the
            libraries its workers' programs import (never cmlray).

    Returns:
        The venv's directory (its interpreter is ``<venv>/bin/python``).

    Raises:
        RuntimeError: if building it failed (the pip output is in the message).
    """
    venv = venv_path(extras)
    lock_path = venv.with_name(venv.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another run builds it
        if not (venv / COMPLETE_MARK).exists():
            _build(venv, extras)
    return venv


def _build(venv: Path, extras: tuple[str, ...] = ()) -> None:
    """Builds the venv in place and marks it complete (caller holds the lock)."""
    shutil.rmtree(venv, ignore_errors=True)
    started = time.monotonic()
    # No pip of its own (the test venv's pip installs it) and the .pyc of Ray
    # and its requirements compiled on every core after the install, not one by
    # one by pip for every package: about half the time. Compiled, because
    # PYTHONDONTWRITEBYTECODE may be set, and each Ray process on a node would
    # then compile Ray anew (0.8 s of CPU a start).
    site_packages = (
        venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    )
    steps = [
        [str(base_python()), "-m", "venv", "--without-pip", str(venv)],
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-compile",
            f"ray=={ray_version()}",
            *extras,
        ],
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    for argv in steps:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
        )
        if done.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise RuntimeError(
                f"building the Ray-only venv failed: {' '.join(argv)}\n{done.stderr[-3000:]}"
            )
    compile_all = [str(venv / "bin" / "python"), "-m", "compileall", "-q", "-j", "0"]
    paths = [str(p) for top in ray_modules() for p in site_packages.glob(f"{top}*") if p.is_dir()]
    paths += [str(site_packages / f"{top}.py") for top in ray_modules()]
    existing = [path for path in paths if os.path.exists(path)]
    # A file some package ships that does not compile is no reason to fail the build.
    subprocess.run([*compile_all, *existing], env=env, capture_output=True, timeout=BUILD_TIMEOUT_S)
    elapsed_s = time.monotonic() - started
    (venv / COMPLETE_MARK).write_text(f"built in {elapsed_s:.1f} s\n")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def ray_modules() -> list[str]:
    """The top-level modules of Ray and what it requires (every Ray process imports them).

    Only those are compiled in a node's venv: the extras' own (scikit-learn,
    SciPy...) are imported by a few programs only, and compiling them takes long.
    """
    seen: set[str] = set()
    todo = ["ray"]
    while todo:
        name = _canonical(todo.pop())
        if name in seen:
            continue
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo += [
            re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0] for r in requires if "extra ==" not in r
        ]
    tops = importlib.metadata.packages_distributions()
    return sorted(t for t, dists in tops.items() if any(_canonical(d) in seen for d in dists))


def ray_start_argv(venv: Path, spec: HostSpec, ip: str, head: str | None) -> list[str]:
    """``ray start --block`` for one host: the head when ``head`` is None, else a node."""
    argv = [
        str(venv / "bin" / "ray"),
        "start",
        "--block",
        f"--node-ip-address={ip}",
        f"--num-cpus={spec.num_cpus}",
        f"--num-gpus={spec.num_gpus}",
        f"--memory={int(spec.memory_gib * 2**30)}",
        f"--node-name={spec.name}",
        f"--labels=host={spec.name}",
        f"--resources={json.dumps(spec.resources)}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        "--disable-usage-stats",
        "--temp-dir=/tmp/ray",
    ]
    if head is None:
        return [*argv, "--head", f"--port={HEAD_PORT}", "--include-dashboard=false"]
    return [*argv, f"--address={head}"]


# A driver that prints the alive nodes (ray.nodes()) once `count` are alive (0: at once).
NODES_PROBE = """
import json, sys, time, ray
address, count, timeout_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ray.init(address=address, log_to_driver=False, logging_level="ERROR")
deadline = time.monotonic() + timeout_s
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if count == 0 or len(alive) == count:
        break
    if time.monotonic() > deadline:
        sys.exit(f"{len(alive)} nodes alive after {timeout_s} s, not {count}")
    time.sleep(0.2)
print(json.dumps(alive))
"""
