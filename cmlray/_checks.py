"""Every check of a public argument, in one place.

Bad input gets a ``TypeError`` (wrong kind of value) or ``ValueError`` (a
value out of range) naming the argument and what was expected, before
anything starts. ``launch_workers`` (``_spec.py``), ``init`` (``_config.py``),
``logs``, ``watch``, ``Queue`` and the queue's and the CLI's own options all
check through these functions, so one rule reads the same everywhere.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import cloudpickle

KERNELS_CML_ONLY = {"python2": "Python 2", "scala": "Scala"}
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


def check_text(name: str, value: object) -> str:
    """A non-empty string, stripped."""
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"{name} must be a non-empty string, got {value!r}")
    return value.strip()


def check_name(name: object) -> str | None:
    """A worker's name, or None for the default."""
    return None if name is None else check_text("name", name)


def check_resources(resources: object) -> dict[str, float] | None:
    if resources is None:
        return None
    if not isinstance(resources, Mapping):
        raise TypeError(f"resources must be a dict of name to amount, got {resources!r}")
    checked = {}
    for key, value in resources.items():
        if (
            not isinstance(key, str)
            or isinstance(value, bool)
            or not isinstance(value, int | float)
        ):
            raise TypeError(f"resources must map str names to numbers, got {key!r}: {value!r}")
        if value < 0:
            raise ValueError(f"resources[{key!r}] must be >= 0, got {value!r}")
        checked[key] = float(value)
    return checked


def check_runtime_env(runtime_env: object) -> dict[str, Any] | None:
    if runtime_env is None:
        return None
    if not isinstance(runtime_env, Mapping):
        raise TypeError(f"runtime_env must be a dict (Ray's runtime_env), got {runtime_env!r}")
    env = dict(runtime_env)
    working_dir = env.get("working_dir")
    if working_dir is not None:
        if not isinstance(working_dir, str) or not os.path.isdir(working_dir):
            raise ValueError(
                f"runtime_env['working_dir'] must be an existing directory, got {working_dir!r}"
            )
        env["working_dir"] = os.path.abspath(working_dir)
    env_vars = env.get("env_vars")
    if env_vars is not None and not (
        isinstance(env_vars, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items())
    ):
        raise TypeError(f"runtime_env['env_vars'] must map names to strings, got {env_vars!r}")
    return env


def check_log_dir(log_dir: object) -> str | None:
    if log_dir is None:
        return None
    if not isinstance(log_dir, str | os.PathLike):
        raise TypeError(f"log_dir must be a directory path, got {log_dir!r}")
    path = os.path.abspath(os.fspath(log_dir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"log_dir must be a directory, and {path} is a file")
    return path


def check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_patterns(patterns: object) -> tuple[str, ...]:
    if isinstance(patterns, str) or not isinstance(patterns, Sequence):
        raise TypeError(f"project_excludes must be a list of patterns, got {patterns!r}")
    if not all(isinstance(p, str) and p.strip() for p in patterns):
        raise TypeError(f"project_excludes must hold non-empty strings, got {patterns!r}")
    return tuple(patterns)


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        names = [repr(choice) for choice in choices]
        shown = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        raise ValueError(f"{name} must be {shown}, got {value!r}")
    return str(value)


def check_seconds(name: str, value: object) -> float:
    """A number of seconds > 0."""
    return check_positive(name, value, "seconds")


def check_lines(name: str, value: object) -> int | None:
    """A whole number of lines >= 0, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number of lines or None, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0 lines, got {value!r}")
    return value
