"""The command line that runs a worker's program: script, Python code, ``!`` shell lines, R.

CML follows IPython: code whose lines all start with ``!`` is a shell
command line, run by bash line after line; ``!`` lines inside Python code
run in the shell where they stand. The session builds the command line
(``build_argv``); the node that runs it fills in its own interpreter and
shell (``resolve_argv``), since an attached session's paths may not exist
there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

SHELL_PREFIX = "!"
# Stands for the node's own interpreter in a command line built by the
# session: the node that runs the program puts its sys.executable there.
NODE_PYTHON = "{node-python}"


def shell_path() -> str:
    """The shell that runs ``!`` commands: bash as in CML, else sh."""
    return shutil.which("bash") or "/bin/sh"


def is_shell_code(code: str) -> bool:
    """True when every non-blank line of ``code`` is a ``!`` shell line."""
    lines = [line.strip() for line in code.splitlines() if line.strip()]
    return bool(lines) and all(line.startswith(SHELL_PREFIX) for line in lines)


def shell_script(code: str) -> str:
    """The ``!`` lines of ``code`` without their ``!``, one command a line."""
    lines = [line.strip() for line in code.splitlines() if line.strip()]
    return "\n".join(line[len(SHELL_PREFIX) :] for line in lines)


_SYSTEM_HELPER = (
    "def __cmlray_system(cmd):\n"
    "    import subprocess, sys\n"
    "    sys.stdout.flush(); sys.stderr.flush()\n"
    "    return subprocess.run(cmd, shell=True, executable={shell!r}).returncode\n"
)


def python_with_shell_lines(code: str) -> str:
    """IPython's rule for Python code holding ``!cmd`` lines.

    Each ``!cmd`` line becomes a call that runs ``cmd`` in the shell, at the
    same indentation, so ``for`` loops and ``if`` blocks keep working.
    """
    if not any(line.lstrip().startswith(SHELL_PREFIX) for line in code.splitlines()):
        return code
    out = [_SYSTEM_HELPER.format(shell=shell_path())]
    for line in code.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(SHELL_PREFIX):
            indent = line[: len(line) - len(stripped)]
            out.append(f"{indent}__cmlray_system({stripped[len(SHELL_PREFIX) :]!r})")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


CODE_FILENAME = "<worker code>"
# Runs code given as the next argument under a file name whose lines
# tracebacks can show (``python -c`` shows none).
_CODE_RUNNER = (
    "import linecache, sys; __s = sys.argv.pop(1); "
    f"linecache.cache[{CODE_FILENAME!r}] = "
    f"(len(__s), None, __s.splitlines(True), {CODE_FILENAME!r}); "
    f"del linecache; exec(compile(__s, {CODE_FILENAME!r}, 'exec'))"
)


# Runs R code given as the next argument as Rscript runs a file: top-level
# autoprint, "Error: ..." and exit status 1 on error. ``Rscript -e`` would
# mangle code containing "~+~" and silently run garbage past about 10 kB
# (measured with R 4.2), so the code reaches R as a file: a here-string on fd 3.
_R_CODE_RUNNER = 'exec Rscript /dev/fd/3 3<<<"$1"'


def r_code_argv(code: str) -> list[str]:
    """The command line that runs R source ``code`` with ``Rscript``."""
    bash = shutil.which("bash")
    if bash is None:  # no here-strings in a POSIX sh: fall back to -e
        return ["Rscript", "-e", code]
    return [bash, "-c", _R_CODE_RUNNER, "Rscript", code]


def build_argv(*, kernel: str, script: str, code: str, python: str) -> list[str]:
    """The command line that runs a worker's program.

    Args:
        kernel: ``"python3"`` or ``"r"`` (already validated).
        script: absolute path of a script, or "" when ``code`` is used.
        code: Python (or R) source; ``!`` lines are shell commands.
        python: the interpreter that runs Python programs.
    """
    if script:
        return [python, "-u", script] if kernel == "python3" else ["Rscript", script]
    if is_shell_code(code):
        return [shell_path(), "-c", shell_script(code)]
    if kernel == "r":
        return r_code_argv(code)
    return [python, "-u", "-c", _CODE_RUNNER, python_with_shell_lines(code)]


def resolve_argv(argv: Sequence[str], python: str) -> list[str]:
    """``argv`` as this node runs it: its interpreter, its shell."""
    resolved = [python if arg == NODE_PYTHON else arg for arg in argv]
    first = resolved[0] if resolved else ""
    if os.path.basename(first) in ("bash", "sh") and not os.path.exists(first):
        resolved[0] = shell_path()  # the session's bash may live elsewhere here
    return resolved
