"""``WorkerSpec``: one launch request, validated before anything starts.

``WorkerSpec.from_call`` checks every argument of ``launch_workers``
(through ``_checks.py``), so a bad call raises ``TypeError``/``ValueError``
naming the argument and what was expected, and no worker is started. The
spec then yields the program's command line (``_cmdline.py``), the shape
to reserve (``_reservations.Shape``) and the environment each worker's
program sees.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cmlray import _cmdline
from cmlray._checks import (
    check_count,
    check_env,
    check_function,
    check_kernel,
    check_name,
    check_non_negative,
    check_positive,
    check_program,
    check_timeout,
)

GIB = 1 << 30
FN_PROGRAM = "import sys; from cmlray._fnrun import main; sys.exit(main())"  # an fn= worker's
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS",
)
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
            return [python, "-u", "-c", FN_PROGRAM]
        return _cmdline.build_argv(
            kernel=self.kernel, script=self.script, code=self.code, python=python
        )

    def command_text(self) -> str:
        """The program in words, for errors and the CLI."""
        if self.payload is not None:
            return "fn"
        return self.script or self.code.strip().splitlines()[0][:120]

    def worker_env(
        self,
        base: Mapping[str, str],
        identity: Mapping[str, str],
        session_env: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """The environment of one worker's program, less its node's variables.

        Precedence, lowest first: ``base`` (the session's environment on an
        own head; nothing when attached, where the node's is used), cmlray's defaults
        (thread counts from ``cpu``, unbuffered Python, the session's
        interpreter first on PATH), ``session_env`` (the ``env_vars`` of the
        session's ``runtime_env``, which Ray gives every worker of the job),
        the user's ``env``, then the worker's identity (``CDSW_ENGINE_ID``,
        ``CML_MASTER_IP``, ...).
        """
        threads = str(max(1, math.floor(self.cpu)))
        env = dict(base)
        env.update({variable: threads for variable in THREAD_VARIABLES})
        env["PYTHONUNBUFFERED"] = "1"
        if "PATH" in env:  # attached sessions leave the PATH to each node
            env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env["PATH"]])
        env.update(session_env or {})
        env.update(self.env)
        env.update(identity)
        return env
