"""``WorkerSpec``: one launch request, validated before anything starts.

Every check of ``launch_workers``' arguments lives here, so a bad call raises
``TypeError``/``ValueError`` naming the argument and what was expected, and
no worker is started. The spec then yields the resources to reserve
(``_placement.bundle``) and the environment each worker's program sees.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cloudpickle

from cmlray import _process

GIB = 1 << 30
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS",
)
# Set by cmlray for each worker; a user's env= may not override them.
RESERVED_VARIABLES = frozenset(
    {
        "CML_MASTER_IP",
        "CDSW_MASTER_IP",
        "CDSW_MASTER_ID",
        "CDSW_ENGINE_ID",
        "CDSW_IP_ADDRESS",
        "CDSW_APP_PORT",
        "CUDA_VISIBLE_DEVICES",
    }
)
KERNELS_CML_ONLY = {"python2": "Python 2", "scala": "Scala"}
# What describes the session's own host and interpreter: an attached
# session's workers take these from their node instead of from the session.
HOST_VARIABLES = frozenset(
    {
        "PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE",
        "VIRTUAL_ENV", "VIRTUAL_ENV_PROMPT", "LD_LIBRARY_PATH", "LD_PRELOAD",
        "HOME", "PWD", "OLDPWD", "SHLVL", "_", "HOSTNAME", "TMPDIR", "TMP", "TEMP",
        "DISPLAY", "XAUTHORITY", "TERM", "COLUMNS", "LINES",
    }
)  # fmt: skip
HOST_PREFIXES = ("CONDA_", "XDG_", "SSH_", "RAY_", "JPY_", "JUPYTER_", "IPY", "KUBERNETES_")


def portable_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` less what belongs to the host it was read on (paths, Ray, terminal)."""
    return {
        key: value
        for key, value in env.items()
        if key not in HOST_VARIABLES and not key.startswith(HOST_PREFIXES)
    }


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_positive(name: str, value: object, unit: str) -> float:
    """``value`` as a float, if it is a finite number > 0."""
    if not _is_number(value):
        raise TypeError(f"{name} must be a number of {unit} > 0, got {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a number of {unit} > 0, got {value!r}")
    return number


def check_count(name: str, value: object, minimum: int) -> int:
    """``value`` as an int, if it is a whole number >= ``minimum``."""
    integral = isinstance(value, float) and value.is_integer()
    if not (isinstance(value, int) or integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    if value < minimum:  # type: ignore[operator]
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)  # type: ignore[call-overload,no-any-return]


def check_non_negative(name: str, value: object) -> float:
    if not _is_number(value) or not math.isfinite(float(value)) or float(value) < 0:  # type: ignore[arg-type]
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_timeout(timeout_s: object) -> float | None:
    """A run time limit in seconds (> 0), or None for none."""
    if timeout_s is None:
        return None
    return check_positive("timeout_s", timeout_s, "seconds")


def check_kernel(kernel: object) -> str:
    """The kernel name, normalised, if cmlray can run it here."""
    if not isinstance(kernel, str):
        raise TypeError(f"kernel must be a string such as 'python3', got {kernel!r}")
    name = kernel.strip().lower()
    if name in ("python3", "python"):
        return "python3"
    if name == "r":
        if shutil.which("Rscript") is None:
            raise ValueError("kernel='r' needs Rscript on PATH, and there is none")
        return "r"
    if name in KERNELS_CML_ONLY:
        raise ValueError(
            f"kernel={kernel!r}: cmlray cannot run {KERNELS_CML_ONLY[name]} workers;"
            " use 'python3' (or 'r' with Rscript installed)"
        )
    raise ValueError(f"kernel must be 'python3' or 'r', got {kernel!r}")


def check_env(env: object) -> dict[str, str]:
    """A copy of ``env`` if it maps str names to str values."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a dict of str to str, got {type(env).__name__}")
    checked: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"env must map str to str, got {key!r}: {type(value).__name__}")
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ValueError(f"env has an invalid variable name or value: {key!r}")
        if key in RESERVED_VARIABLES:
            raise ValueError(f"env may not set {key}: cmlray sets it for each worker")
        checked[key] = value
    return checked


def check_program(script: object, code: object, project_dir: str) -> tuple[str, str]:
    """(absolute script path, code); exactly one of them is non-empty."""
    if script is None:
        script = ""
    if code is None:
        code = ""
    if not isinstance(script, str | os.PathLike):
        raise TypeError(f"script must be a path to a script file, got {script!r}")
    if not isinstance(code, str):
        raise TypeError(f"code must be a string of source code or '!shell' lines, got {code!r}")
    script = os.fspath(script)
    if not script and not code.strip():
        raise ValueError("launch_workers needs script= (a file) or code= (source or '!cmd')")
    if not script:
        return "", code
    path = os.path.join(project_dir, os.path.expanduser(script))
    if not os.path.isfile(path):
        raise ValueError(f"script {script!r} not found (looked for {path})")
    if code.strip():
        warnings.warn("both script and code given: code is ignored (CML's rule)", stacklevel=4)
    return os.path.abspath(path), ""


def check_function(fn: object, args: object, kwargs: object) -> bytes | None:
    """The cloudpickled ``(fn, args, kwargs)`` of a function worker, or None."""
    if fn is None:
        if args or kwargs:
            raise ValueError("args= and kwargs= need fn= (a callable to run)")
        return None
    if not callable(fn):
        raise TypeError(f"fn must be a callable, got {fn!r}")
    if not isinstance(args, tuple | list):
        raise TypeError(f"args must be a tuple of arguments for fn, got {args!r}")
    if kwargs is not None and not (
        isinstance(kwargs, Mapping) and all(isinstance(k, str) for k in kwargs)
    ):
        raise TypeError(f"kwargs must be a dict of str to value for fn, got {kwargs!r}")
    try:
        return bytes(cloudpickle.dumps((fn, tuple(args), dict(kwargs or {}))))
    except Exception as exc:
        raise TypeError(f"fn and its arguments must be picklable: {exc}") from exc


def check_name(name: object) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    return name.strip()


@dataclass(frozen=True)
class WorkerSpec:
    """A validated ``launch_workers`` request (all ``n`` workers share it)."""

    n: int
    cpu: float
    memory_gib: float
    nvidia_gpu: int
    kernel: str
    script: str
    code: str
    env: Mapping[str, str]
    name: str | None
    grace_period_s: float
    accelerator_type: str | None = None
    payload: bytes | None = None
    timeout_s: float | None = None

    @classmethod
    def from_call(cls, project_dir: str, **kwargs: Any) -> WorkerSpec:
        """Validate ``launch_workers``' arguments (raises before anything starts)."""
        payload = check_function(kwargs.get("fn"), kwargs.get("args", ()), kwargs.get("kwargs"))
        if payload is not None:
            if kwargs["script"] or kwargs["code"]:
                raise ValueError("give one of script=, code= or fn=, not several")
            kwargs = {**kwargs, "code": "pass"}  # validated as a program below; fn runs instead
        script, code = check_program(kwargs["script"], kwargs["code"], project_dir)
        accelerator = kwargs.get("accelerator_label_id")
        if accelerator is not None and not isinstance(accelerator, str | int):
            raise TypeError(f"accelerator_label_id must be a string, got {accelerator!r}")
        return cls(
            n=check_count("n", kwargs["n"], 1),
            cpu=check_positive("cpu", kwargs["cpu"], "cores"),
            memory_gib=check_positive("memory", kwargs["memory"], "GiB"),
            nvidia_gpu=check_count("nvidia_gpu", kwargs["nvidia_gpu"], 0),
            kernel=check_kernel(kwargs["kernel"]),
            script=script,
            code=code,
            env=check_env(kwargs["env"]),
            name=check_name(kwargs.get("name")),
            grace_period_s=check_non_negative("grace_period_s", kwargs["grace_period_s"]),
            accelerator_type=str(accelerator) if accelerator not in (None, "") else None,
            payload=payload,
            timeout_s=check_timeout(kwargs.get("timeout_s")),
        )

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    def argv(self, python: str = sys.executable) -> list[str]:
        """The program's command line."""
        if self.payload is not None:
            return [python, "-u", "-m", "cmlray._fnrun"]
        return _process.build_argv(
            kernel=self.kernel, script=self.script, code=self.code, python=python
        )

    def command_text(self) -> str:
        """The program in words, for errors and the CLI."""
        if self.payload is not None:
            return "fn"
        return self.script or self.code.strip().splitlines()[0][:120]

    def worker_env(self, base: Mapping[str, str], identity: Mapping[str, str]) -> dict[str, str]:
        """The environment of one worker's program, less its node's variables.

        Precedence, lowest first: ``base`` (the session's environment on an
        own head; nothing when attached, where the node's is used), cmlray's defaults
        (thread counts from ``cpu``, unbuffered Python, the session's
        interpreter first on PATH), the user's ``env``, then the worker's
        identity (``CDSW_ENGINE_ID``, ``CML_MASTER_IP``, ...).
        """
        threads = str(max(1, math.floor(self.cpu)))
        env = dict(base)
        env.update({variable: threads for variable in THREAD_VARIABLES})
        env["PYTHONUNBUFFERED"] = "1"
        if "PATH" in env:  # attached sessions leave the PATH to each node
            env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env["PATH"]])
        env.update(self.env)
        env.update(identity)
        return env
