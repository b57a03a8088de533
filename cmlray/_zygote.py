"""Python worker programs forked from an interpreter that has already started.

A Python worker's program is ``python -u SCRIPT`` or ``python -u -c CODE``
(``_cmdline.py``). Started as a new interpreter, each pays Python's start
(site, ``.pth`` files, the encodings): about 40 ms of CPU here, most of the
cost of a thousand small workers on two cores. So a node agent keeps a
*zygote* per interpreter and start-up environment: an interpreter started
once as the program's would be (same executable, ``-u``, the same
``PYTHON*``, locale and ``HOME`` variables, so the same ``sys.path``,
flags and stream encodings), which serves as the fork server of those
workers' guards (``_forkserver.serve``). Such a guard runs the program as a
fork of itself (``fork_program``), which then becomes what a new
interpreter would have been:

- its own session and process group, SIGKILL when the guard dies, the
  signal handlers and mask of a new interpreter, stdin ``/dev/null``,
  stdout and stderr the worker's pipes (unbuffered, as ``-u``), the
  channel to the agent, no other descriptor;
- the worker's environment and working directory, ``sys.argv``,
  ``sys.orig_argv``, ``sys.path`` as the interpreter made it (its first
  entry the script's directory, or ``''`` for code), a fresh ``__main__``,
  and only the modules the interpreter had loaded when it started (the
  guard's own are dropped: an ``import`` loads them anew);
- at the end, what the interpreter does at exit: an uncaught exception's
  traceback and status 1, ``SystemExit``'s status, non-daemon threads
  joined, ``atexit`` functions run, ``__main__``'s objects released (so an
  unclosed file is flushed), streams flushed; a ``KeyboardInterrupt`` ends
  it by SIGINT.

What differs from a new interpreter: the string-hash seed is the zygote's,
shared by the workers it serves, and objects made at start-up are shared
with the zygote until written. ``CMLRAY_FRESH_INTERPRETER=1`` in a
worker's ``env`` starts it as a new interpreter; so is every program this
does not recognise, and all of them when the zygote cannot start (a broken
``sitecustomize``, say): then guards come from the plain fork server.

Standard library only: it runs inside the zygote and its guards.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import gc
import io
import os
import signal
import sys
import types
from collections.abc import Mapping, Sequence

from cmlray import _proctree

TYPE_CHECKING = False  # (the zygote imports this module as it boots: see _procfs.Stat)
if TYPE_CHECKING:
    from typing import Any

FRESH_ENV = "CMLRAY_FRESH_INTERPRETER"
PAD_ENV = "CMLRAY_ZYGOTE_PAD"
ARGV_PAD, ENV_PAD = 4096, 96 * 1024  # /proc shows at most a page of a rewritten title
_STARTUP_NAMES = frozenset({"HOME", "LANG", "LANGUAGE"})
_STARTUP_PREFIXES = ("PYTHON", "LC_")
_RUNTIME_NAMES = frozenset({"PYTHONBREAKPOINT"})  # read when used, not at start
CODE_FILE = "<string>"

# The interpreter as it was once started, before the zygote loaded its own
# modules: set in the zygote (and so in its guards) by ``serve``.
_baseline: tuple[frozenset[str], tuple[str, ...]] | None = None
# What the zygote imported ahead for its programs (``_zygoteboot.py``): the
# modules, and the file of each new top-level one (what a program's own
# first ``sys.path`` entry must not hold another of).
_preloaded: frozenset[str] = frozenset()
_preloaded_files: dict[str, str] = {}

Key = tuple[str, tuple[tuple[str, str], ...]]

# Started as ``python -u -c BOOT PACKAGE_ROOT SOCKET_FD``: notes what the
# interpreter loaded, then boots from the agent's copy of cmlray, loaded by path
# (``_zygoteboot.py``: never whichever ``cmlray`` comes first on ``sys.path``).
BOOT = (
    "import sys; __b = (frozenset(sys.modules), tuple(sys.path)); "
    "import importlib.util as __u; __r = sys.argv.pop(1) + '/cmlray'; "
    "__s = __u.spec_from_file_location('cmlray._zygoteboot', __r + '/_zygoteboot.py'); "
    "__m = __u.module_from_spec(__s); __s.loader.exec_module(__m); "
    "sys.exit(__m.boot(__r, int(sys.argv[1]), __b))"
)


def startup_key(argv: Sequence[str], env: Mapping[str, str]) -> Key | None:
    """Which zygote can run this program: its interpreter and start-up variables.

    None for a program a zygote cannot run (not ``python -u`` with a script
    or ``-c``) or that asked for a new interpreter.
    """
    if program_form(argv) is None or env.get(FRESH_ENV, "") not in ("", "0"):
        return None
    return argv[0], tuple(sorted(startup_variables(env).items()))


def startup_variables(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` that shape an interpreter's start (part of a zygote's key)."""
    return {k: v for k, v in env.items() if _shapes_startup(k)}


def workers_startup(env: Mapping[str, str]) -> dict[str, str]:
    """What shapes the start of a session's Python workers by default: ``env``'s, unbuffered."""
    return startup_variables(env) | {"PYTHONUNBUFFERED": "1"}


def _shapes_startup(name: str) -> bool:
    # PYTHONBREAKPOINT is read at each ``breakpoint()``, not at start; Ray's driver sets
    # it in ``ray.init``, after an own head's agent has started the zygote (_homeagent.py).
    return (
        name in _STARTUP_NAMES or name.startswith(_STARTUP_PREFIXES)
    ) and name not in _RUNTIME_NAMES


def program_form(argv: Sequence[str]) -> tuple[str, str, list[str]] | None:
    """``("-c", code, args)`` or ``("script", path, args)``; None for other command lines."""
    if len(argv) < 3 or argv[1] != "-u" or not os.path.isabs(argv[0]):
        return None
    if argv[2] == "-c":
        return ("-c", argv[3], list(argv[4:])) if len(argv) >= 4 else None
    if argv[2].startswith("-") or not argv[2].endswith(".py"):
        return None
    return "script", argv[2], list(argv[3:])


def zygote_command(key: Key, package_root: str, socket_fd: int) -> tuple[list[str], dict[str, str]]:
    """The zygote's command line and environment.

    Its environment is this process's (the agent's) with the start-up
    variables of ``key``. Both end in padding: room where each program
    writes its own command line and environment (``_retitle``).
    """
    python, startup = key
    env = {k: v for k, v in os.environ.items() if not _shapes_startup(k) and k != PAD_ENV}
    env |= dict(startup) | {PAD_ENV: " " * ENV_PAD}  # the padding last: see _retitle
    argv = [python, "-u", "-c", BOOT, package_root, str(socket_fd), " " * ARGV_PAD]
    return argv, env


def serve(
    socket_fd: int, baseline: tuple[frozenset[str], tuple[str, ...]], preloaded: frozenset[str]
) -> int:
    """The zygote's life: fork guards (that fork programs) until the agent goes.

    ``preloaded``: the modules each program keeps, unless its own first
    ``sys.path`` entry shadows one (``_zygoteboot.py``); ``baseline[0]`` or more.
    """
    import socket

    from cmlray import _forkserver

    global _baseline, _preloaded, _preloaded_files
    if len(os.listdir("/proc/self/task")) > 1:  # a sitecustomize started threads: unsafe to fork
        return 3
    _baseline = baseline
    _preloaded = preloaded - baseline[0]
    _preloaded_files = _top_level_files(_preloaded)
    return _forkserver.serve(socket.socket(fileno=socket_fd))


def _top_level_files(names: frozenset[str]) -> dict[str, str]:
    """The real file of each top-level module among ``names`` loaded from one."""
    files = {}
    for name in names:
        file = getattr(sys.modules.get(name), "__file__", None)
        if "." not in name and isinstance(file, str):
            files[name] = os.path.realpath(file)
    return files


def shadowed(entry: str) -> bool:
    """Whether the ``sys.path`` entry ``entry`` holds another of a preloaded module.

    A new interpreter would import that one (a script's directory comes first).
    Only the names the directory holds (``name``, ``name.py``, ``name.<tag>.so``...)
    are asked of the import system: one listing instead of a lookup for each.
    """
    from importlib.machinery import PathFinder

    where = [entry or os.getcwd()]
    try:
        present = {listed.partition(".")[0] for listed in os.listdir(where[0])}
    except OSError:  # no such directory: nothing there to import
        return False
    for name in present.intersection(_preloaded_files):
        file = _preloaded_files[name]
        spec = PathFinder.find_spec(name, where)
        found = spec.origin if spec is not None and spec.has_location else None
        if found and os.path.realpath(found) != file:  # (None: not there, or a namespace)
            return True
    return False


def ready() -> bool:
    """True inside a zygote's guard: Python programs can be forked."""
    return _baseline is not None


def fork_program(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: str,
    stdout_fd: int,
    stderr_fd: int,
    pass_fds: Sequence[int] = (),
    niceness: int | None = None,
) -> _proctree.Spawned:
    """Start ``argv`` (a ``program_form``) as a fork of this interpreter.

    Raises OSError as ``_proctree.spawn`` does (no such directory, no more processes).
    """
    form = program_form(argv)
    assert form is not None and _baseline is not None
    os.stat(cwd)  # a missing directory is the guard's error to report, as with spawn
    pid = os.fork()
    if pid:
        return _proctree.Spawned(pid)
    status = 127
    try:
        _become_new(argv, env, cwd, (stdout_fd, stderr_fd), pass_fds, form, niceness)
        status = _run_main(form)
    except BaseException as exc:  # the child must never return into the guard
        with contextlib.suppress(BaseException):
            os.write(2, f"cmlray: the program could not start: {exc!r}\n".encode())
    os._exit(status)


def _become_new(
    argv: Sequence[str],
    env: dict[str, str],
    cwd: str,
    outputs: tuple[int, int],
    pass_fds: Sequence[int],
    form: tuple[str, str, list[str]],
    niceness: int | None,
) -> None:
    """Turn this fork of the guard into what ``python -u ...`` would have started."""
    assert _baseline is not None
    _retitle(argv, env)
    signal.set_wakeup_fd(-1)  # the guard's, before its descriptor is closed
    _proctree.enter_program(outputs, pass_fds, niceness)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a new interpreter has
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(signum, signal.SIG_IGN)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    modules, path = _baseline
    kind, target, args = form
    sys.path[:] = path
    if kind == "script":
        sys.path[0] = os.path.dirname(os.path.realpath(target))
    if _preloaded and not shadowed(sys.path[0]):
        modules = modules | _preloaded
    _drop_modules_but(modules)
    sys.argv = ["-c" if kind == "-c" else target, *args]
    sys.orig_argv = list(argv)
    _new_streams()
    gc.enable()


def _drop_modules_but(kept: frozenset[str]) -> None:
    """Forget every module not in ``kept``: an ``import`` loads it anew.

    A package kept (``cmlray``) also forgets it as an attribute.
    """
    for name in [name for name in sys.modules if name not in kept]:
        module = sys.modules.pop(name)
        parent, _, child = name.rpartition(".")
        if parent in kept and getattr(sys.modules.get(parent), child, None) is module:
            delattr(sys.modules[parent], child)


def _retitle(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Show the program's command line and environment in ``/proc`` (``ps``, ``pgrep -f``).

    A fork shows its zygote's. The kernel shows the memory the zygote's
    arguments and environment were copied to (bounds in ``/proc/self/stat``),
    so they are written over, as ``setproctitle`` does: the command line
    as one title (``ps`` shows it; a last byte that is not NUL tells the
    kernel to read up to the title's end), the environment as a block of
    ``NAME=value`` strings when it fits, the zygote's variables after it
    cleared (its padding, last, needs no writing: a reader stops at the
    double NUL). Writes only the pages that change.
    """
    import ctypes

    with open("/proc/self/stat", "rb") as file:
        fields = file.read().rsplit(b")", 1)[1].split()
    arg_start, arg_end, env_start, env_end = (int(field) for field in fields[45:49])
    title = " ".join(argv).encode(errors="replace")[: min(arg_end - arg_start, ARGV_PAD) - 2]
    ctypes.memmove(arg_start, title + b"\0", len(title) + 1)
    ctypes.memmove(arg_end - 1, b" ", 1)
    block = b"".join(f"{k}={v}".encode(errors="replace") + b"\0" for k, v in env.items()) + b"\0"
    pad_start = env_end - 1 - ENV_PAD  # where the padding's spaces begin
    if len(block) <= env_end - env_start:
        ctypes.memmove(env_start, block, len(block))
        stale = pad_start - (env_start + len(block))
        if stale > 0:
            ctypes.memset(env_start + len(block), 0, stale)


def _new_streams() -> None:
    """``sys.stdout`` and ``sys.stderr`` as ``-u`` makes them, on the new descriptors."""
    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        stream = io.TextIOWrapper(
            io.FileIO(fd, "wb", closefd=False), encoding=old.encoding, errors=old.errors,
            newline="\n", line_buffering=False, write_through=True,
        )  # fmt: skip
        stream.mode = "w"  # type: ignore[misc]
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _run_main(form: tuple[str, str, list[str]]) -> int:
    """Run the program as ``__main__``, then end as the interpreter would; the exit status."""
    kind, target, _ = form
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    main.__loader__ = sys.modules["_frozen_importlib"].BuiltinImporter
    if kind == "script":
        try:
            with open(target, "rb") as file:
                source: str | bytes = file.read()
        except OSError as exc:
            words = f"can't open file {target!r}: [Errno {exc.errno}] {exc.strerror}"
            print(f"{sys.executable}: {words}", file=sys.stderr)
            return 2
        filename = target
        main.__file__ = target
        loaders = sys.modules["_frozen_importlib_external"]
        main.__loader__ = loaders.SourceFileLoader("__main__", target)
        main.__dict__["__cached__"] = None
    else:
        source, filename = target, CODE_FILE
    sys.modules["__main__"] = main
    status, interrupted = _run_code(source, filename, main.__dict__)
    status = _finish(main.__dict__, status)
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return status


def _run_code(source: str | bytes, filename: str, namespace: dict[str, Any]) -> tuple[int, bool]:
    """Compile and run; (exit status, ended by KeyboardInterrupt)."""
    try:
        exec(compile(source, filename, "exec"), namespace)
    except SystemExit as exc:
        return _exit_status(exc), False
    except BaseException as exc:  # what the interpreter would print
        if exc.__traceback__ is not None:  # from the program's first frame, not this one
            exc.__traceback__ = exc.__traceback__.tb_next
        sys.excepthook(type(exc), exc, exc.__traceback__)
        return 1, isinstance(exc, KeyboardInterrupt)
    return 0, False


def _exit_status(exc: SystemExit) -> int:
    """The status ``SystemExit`` ends an interpreter with (a non-int is printed, status 1)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    with contextlib.suppress(Exception):
        print(exc.code, file=sys.stderr)
    return 1


def _finish(namespace: dict[str, Any], status: int) -> int:
    """What the interpreter does at exit, in its order; a ``SystemExit`` meanwhile wins."""
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()  # joins non-daemon threads
        atexit._run_exitfuncs()
        namespace.clear()
        gc.collect()
    except SystemExit as exc:
        status = _exit_status(exc)
    except BaseException as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
        status = status or 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return status
