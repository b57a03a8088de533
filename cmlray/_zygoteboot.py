"""A zygote's boot: cmlray's worker side imported ahead, then the zygote's own code.

A queue worker's program starts with ``import cmlray.worker`` (6-9 ms of
CPU here), an Executor's with ``cmlray._calls``, and the first function it
loads imports ``cloudpickle`` (15 ms more). A zygote (``_zygote.py``) imports
them once as it boots, before anything of its own, and every program it forks
starts with them loaded: the modules a new interpreter would load from the
same files, no more and no other:

- only when ``import cmlray`` on the zygote's interpreter and ``sys.path``
  finds the package the zygote runs from (the agent's copy), the one the
  program's own ``import`` would find; otherwise nothing is imported ahead
  and the zygote loads its code from the agent's copy by path, as before;
- imported right after the interpreter's start, so the modules they load
  are exactly what those imports load in a new interpreter (the zygote's
  own modules come after and are dropped from every program);
- a program whose first ``sys.path`` entry (its script's directory, or its
  working directory for ``-c``) holds a module of the same name as one of
  them (an ``inspect.py`` beside the script, a ``cmlray`` package of its
  own) starts with none of them: its ``import`` finds its own, as a new
  interpreter's would (``_zygote.shadowed``).

Loaded by path from ``_zygote.BOOT`` (not registered as a module: a program
never has it). Standard library only.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

PRELOAD = ("cmlray.worker", "cmlray._calls", "cloudpickle")

Baseline = tuple[frozenset[str], tuple[str, ...]]


def boot(package_dir: str, socket_fd: int, baseline: Baseline) -> int:
    """Import ``PRELOAD`` if it is the program's, then serve as a zygote; the exit status."""
    if _preload(package_dir):
        preloaded = frozenset(sys.modules)
    else:
        preloaded = baseline[0]
        _load_by_path(package_dir)
    from cmlray import _zygote

    return _zygote.serve(socket_fd, baseline, preloaded)


def _finds_this_package(package_dir: str) -> bool:
    """Whether ``import cmlray`` here (``sys.path``, the import hooks) loads ``package_dir``."""
    try:
        spec = importlib.util.find_spec("cmlray")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.origin:
        return False
    init = os.path.join(package_dir, "__init__.py")
    return os.path.realpath(spec.origin) == os.path.realpath(init)


def _preload(package_dir: str) -> bool:
    """Import ``PRELOAD`` as a program would; whether every one of them was."""
    if "cmlray" in sys.modules or not _finds_this_package(package_dir):
        return False
    try:
        for name in PRELOAD:
            importlib.import_module(name)
    except Exception:  # (a broken install: each program's own import says what is wrong)
        return False
    return True


def _load_by_path(package_dir: str) -> None:
    """cmlray from the agent's copy, whatever ``sys.path`` finds first."""
    spec = importlib.util.spec_from_file_location(
        "cmlray", os.path.join(package_dir, "__init__.py"), submodule_search_locations=[package_dir]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cmlray"] = module
    spec.loader.exec_module(module)
