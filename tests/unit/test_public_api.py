"""The public surface: the names ``cmlray`` exports, pinned, and its three lists in step.

``cmlray/__init__.py`` names each public object once (``_PUBLIC``); ``__all__``
is derived from it, and a ``TYPE_CHECKING`` block repeats the imports for
type checkers. A name added, removed or renamed fails here until the pin
below changes with it.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import cmlray

EXPORTED = [
    "CmlrayError",
    "Executor",
    "InfeasibleRequestError",
    "Queue",
    "QueueError",
    "QueueResult",
    "SessionError",
    "StopResult",
    "WorkerError",
    "__version__",
    "await_workers",
    "init",
    "launch_workers",
    "list_workers",
    "logs",
    "shutdown",
    "stop_workers",
    "watch",
]


def test_the_exported_names_are_pinned() -> None:
    assert sorted(cmlray.__all__) == EXPORTED
    assert dir(cmlray) == EXPORTED


def test_every_public_name_resolves_from_its_module() -> None:
    for name, module in cmlray._PUBLIC.items():
        assert getattr(cmlray, name) is getattr(importlib.import_module(module), name)


def test_the_type_checking_block_imports_the_same_names_from_the_same_modules() -> None:
    tree = ast.parse(Path(cmlray.__file__).read_text())
    guarded = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
    )
    imported = {
        alias.asname or alias.name: node.module
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == cmlray._PUBLIC


def test_importing_cmlray_imports_neither_ray_nor_rich() -> None:
    """A worker's program imports cmlray.worker: it must not pay for the session side."""
    code = "import sys, cmlray, cmlray.worker; print(sorted(m for m in ('ray', 'rich') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_cmlray_errors_is_the_only_home_of_public_errors() -> None:
    from cmlray import errors

    assert set(errors.__all__) == {n for n in EXPORTED if n.endswith("Error")}
